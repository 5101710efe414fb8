"""One attempt's syncs of its state folder to the store (state.py restores the folder first).

A sync sends what changed since the last one into the attempt's own stored folder, in the order
of _statefiles' docstring, then writes the attempt's marker; once a marker is written, the older
attempts' stored state goes. Syncs run every interval in the background while the attempt runs,
and once more when it ends, bounded in time if asked.
"""

# Local paths are strings here, as in state.py and _statefiles.py (their PTH rules are off too).
# ruff: noqa: PTH118, PTH120

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import structlog

from batchrun._state import Attempt
from batchrun._statefiles import Stat, SyncPlan, clashing, plan_sync, scan, snapshot, write_record
from batchrun.errors import ConflictError, FencedError, StoreError
from batchrun.progress import ProgressStore

Log = structlog.typing.FilteringBoundLogger


class FolderSync:
    """The syncs of one attempt's local folder into ``S/N`` (S: the eval's stored folder, N: the
    attempt's number), with its marker ``S/N.json``.
    """

    def __init__(  # noqa: PLR0913 - what the folder knows, handed over once
        self,
        store: ProgressStore,
        attempt: Attempt,
        local: str,
        stored: str,
        *,
        record: str,
        interval: float,
        forget: Callable[[list[int]], None],
        log: Log,
    ) -> None:
        """Sync *local* into *stored*; *record* is the local note of what was last synced,
        *interval* the seconds between background syncs, *forget* deletes older attempts' state.
        """
        self.store = store
        self.attempt = attempt
        self.local = local
        self._stored = stored
        self._own = f"{stored}/{attempt.number}"
        self._record = record
        self._interval = interval
        self._forget = forget
        self.log = log
        self._synced: dict[str, Stat] = {}  # what the attempt's stored folder holds
        self._base: dict[str, Stat] = {}  # what the restore left locally
        self._base_number: int | None = None  # the attempt it was restored from
        self._tags: dict[str, str] = {}  # the stored files restored, by their version tags then
        self._older: list[int] = []  # attempts whose folders go once this one has a marker
        self._syncs = 0  # markers written
        self._owed = False  # something was sent or deleted since the last marker
        self._closed = False  # the last sync is done: nothing more is sent
        self._lock = threading.Lock()

    def restored(self, number: int | None, files: dict[str, Stat], tags: dict[str, str], older: list[int]) -> None:
        """What the restore left: local *files* restored from attempt *number* (None: from none),
        the *tags* of its stored files then, and the *older* attempts to forget after a marker.
        """
        self._base_number, self._base, self._tags, self._older = number, files, tags, older

    @property
    def stored_nothing(self) -> bool:
        """Whether the store holds no state of this eval (none restored, none sent, none older)."""
        return self._base_number is None and not self._synced and not self._older and not self._owed

    def sync(self, *, force: bool = False, final: bool = False) -> bool:
        """Send what changed since the last sync (the order is _statefiles' docstring's), then
        the marker; True if anything was sent. Until the folder changes after its restore, the
        restored-from attempt stays the stored truth and nothing is sent, unless *force*. After
        a *final* sync nothing more is sent.
        """
        with self._lock:
            try:
                return self._sync(force=force)
            finally:
                self._closed = self._closed or final

    def _sync(self, *, force: bool) -> bool:
        if self._closed:
            return False
        current = scan(self.local)
        unchanged = current == self._base and not force  # the restored-from attempt is still the truth
        empty = not current and self.stored_nothing  # nothing here, nothing stored: nothing to say
        if not self._syncs and not self._owed and (unchanged or empty):
            return False
        plan = plan_sync(current, self._synced)
        if not plan and not self._owed and self._syncs:
            self._forget_older()  # if an earlier try failed
            return False
        started = time.monotonic()
        self._owed = True
        sent = self._send_all(plan, current)
        marker = self._write_marker()
        self._syncs, self._owed = self._syncs + 1, False
        self._forget_older()
        origin = [self.attempt.number, self.store.writer, marker["sync"]]
        write_record(self._record, {"source": origin, "files": self._synced})
        self.log.debug("state.synced", sent=sent, duration_s=round(time.monotonic() - started, 3))
        return True

    def _send_all(self, plan: SyncPlan, current: dict[str, Stat]) -> int:
        """New files; then changed files as they are now, copied aside (a manifest as read at this
        point); then whatever appeared or changed meanwhile (parts a manifest may name); then the
        copies; then deletions.
        """
        self._delete(clashing(plan.gone, plan.new))
        sent = sum(self._send(name, current[name]) for name in plan.new)
        with tempfile.TemporaryDirectory(prefix=".sending-", dir=os.path.dirname(self.local)) as aside:
            copies = {}
            for name in plan.changed:
                copy = snapshot(os.path.join(self.local, *name.split("/")), aside)
                if copy is not None:
                    copies[name] = copy
            latest = scan(self.local)
            later = plan_sync(latest, self._synced)
            self._delete(clashing(later.gone, later.new))
            meanwhile = [n for n in (*later.new, *later.changed) if n not in copies]
            sent += sum(self._send(name, latest[name]) for name in meanwhile)
            sent += sum(self._send(name, current[name], copy) for name, copy in copies.items())
        self._delete([name for name in self._synced if name not in latest and name not in copies])
        return sent

    def _send(self, name: str, info: Stat, copy: str | None = None) -> int:
        path = copy or os.path.join(self.local, *name.split("/"))
        self.store.guard()
        backend = self.store.backend
        restored = copy is None and name not in self._synced and self._base.get(name) == info
        tag = self._tags.get(name) if restored else None
        try:
            if tag is None or not self._copied(name, tag):  # as restored: copied inside the store
                backend.upload(path, f"{self._own}/{name}")
        except StoreError:
            if not os.path.lexists(path):
                return 0  # deleted while we sent it: the next sync deletes it in the store too
            raise
        self._synced[name] = info
        return 1

    def _copied(self, name: str, tag: str) -> bool:
        """Copy a file unchanged since the restore inside the store, if the restored-from attempt's
        copy is still what was restored (a holder that lost its claim may have written since).
        """
        try:
            self.store.backend.copy(f"{self._stored}/{self._base_number}/{name}", f"{self._own}/{name}", tag)
        except ConflictError:
            return False
        return True

    def _delete(self, names: list[str]) -> None:
        if names:
            self.store.guard()
            self.store.backend.delete([f"{self._own}/{name}" for name in names])
            for name in names:
                self._synced.pop(name, None)

    def _write_marker(self) -> dict[str, object]:
        marker: dict[str, object] = {
            "attempt": self.attempt.number,
            "epoch": self.attempt.epoch,
            "writer": self.store.writer,
            "worker": self.store.worker,
            "sync": self._syncs + 1,
            "synced_at": time.time(),
            "files": len(self._synced),
            "bytes": sum(size for size, _ in self._synced.values()),
        }
        self.store.guard()
        self.store.backend.write(f"{self._stored}/{self.attempt.number}.json", json.dumps(marker).encode())
        return marker

    def _forget_older(self) -> None:
        self._forget(self._older)
        self._older = []

    def last_sync(self, *, force: bool, timeout: float | None) -> bool:
        """The final :meth:`sync`; with a *timeout*, False if it has not finished by then (it
        goes on in the background until the process exits: every file it sends is whole).
        """
        if timeout is None:
            self.sync(force=force, final=True)
            return True
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.sync(force=force, final=True)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
                failure.append(exc)

        thread = threading.Thread(target=work, name="batchrun-state-last-sync", daemon=True)
        thread.start()
        thread.join(timeout)
        if failure:
            raise failure[0]
        return not thread.is_alive()

    @contextlib.contextmanager
    def syncing(self) -> Iterator[None]:
        """Sync every interval in the background while the attempt runs. Leaving does not wait
        for a sync in flight: the last sync waits for it, within its own bound.
        """
        done = threading.Event()

        def loop() -> None:
            while not done.wait(self._interval):
                try:
                    self.sync()
                except FencedError:
                    return  # another process holds this worker's place: nothing more is ours
                except Exception as exc:  # noqa: BLE001 - a store or disk error: tried again next time
                    self.log.warning("state.sync_failed", error=str(exc))

        thread = threading.Thread(target=loop, name="batchrun-state-sync", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
