"""An eval's state folder, carried between pods: restored before each attempt, synced while it
runs and once more when it ends, kept as the eval's results when it completes (results.py).

Only evals whose command uses ``{state}`` (or a run with ``--state``) have one. In the store,
for an eval whose key is K (:func:`batchrun.progress.encode_key`) in the run's generation G::

    P.d/state/G/K/N/...    the folder as attempt N last synced it
    P.d/state/G/K/N.json   written after each complete sync of attempt N: {attempt, epoch, sync, ...}
    P.d/results/K/...      the folder of the attempt that completed (results.py)

Each attempt syncs under its own number, and attempt numbers are unique across workers (claims,
also per generation): a worker that lost its claim, or outlived a reset, writes only under its
own number and generation and never overwrites the state of the eval's new holder. An attempt
restores from the newest attempt of its round that has a marker; once its own first sync has a
marker, older attempts' folders go (markers first). Unchanged files of that first sync are
copied inside the store, not sent again.
"""

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
from batchrun._statefiles import (
    Stat,
    SyncPlan,
    clashing,
    empty_folder,
    local_path,
    locked_folder,
    plan_sync,
    private_folder,
    read_record,
    remove,
    scan,
    slug,
    snapshot,
    write_record,
)
from batchrun.errors import ConflictError, FencedError, StoreError
from batchrun.plan import StateConfig
from batchrun.progress import ProgressStore, encode_key

Log = structlog.typing.FilteringBoundLogger


class RestoreStoppedError(Exception):
    """The run began stopping while an attempt's folder was restored: the attempt never runs."""


def stored_folder(store: ProgressStore, eval_name: str) -> str:
    """Where the attempts of *eval_name* sync their state, in the run's generation."""
    return f"{store.location.sidecar}/state/{store.generation() or 'run'}/{encode_key(eval_name)}"


def attempt_numbers(names: list[str]) -> list[int]:
    """The attempt numbers named by a listing of an eval's stored folder (folders and markers)."""
    return sorted({int(n.removesuffix(".json")) for n in names if n.removesuffix(".json").isdigit()})


def synced_attempts(
    store: ProgressStore, eval_name: str, names: list[str] | None = None
) -> dict[int, dict[str, object]]:
    """The attempts of *eval_name* with a complete sync stored, newest first, with their markers
    (*names*: the listing of its folder, if already made).
    """
    folder = stored_folder(store, eval_name)
    names = store.backend.listdir(folder) if names is None else names
    numbers = sorted((int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()), reverse=True)
    markers: dict[int, dict[str, object]] = {}
    for number in numbers:
        blob = store.backend.read(f"{folder}/{number}.json")
        if blob is not None:
            with contextlib.suppress(ValueError):
                value = json.loads(blob.data)
                markers[number] = value if isinstance(value, dict) else {}
    return markers


def forget(store: ProgressStore, eval_name: str, numbers: list[int]) -> None:
    """Delete the stored state of attempts *numbers*: every marker first, so nobody restores from
    (or keeps) a folder half deleted, then the folders.
    """
    if not numbers:
        return
    folder = stored_folder(store, eval_name)
    store.guard()
    store.backend.delete([f"{folder}/{number}.json" for number in numbers])
    for number in numbers:
        store.guard()
        store.backend.delete_tree(f"{folder}/{number}")


class StateKeeper:
    """The state folders of one run's evals."""

    def __init__(self, store: ProgressStore, config: StateConfig, model: str, eval_set: str) -> None:
        """Keep state for the evals of (*model*, *eval_set*) in *store*, as *config* says; the
        run's local folder is created (or checked) now.
        """
        self.store = store
        self.config = config
        self._local_root = os.path.join(config.root, f"{slug(model)}.{slug(eval_set)}")
        private_folder(self._local_root)
        self.log: Log = structlog.get_logger("batchrun").bind(model=model, eval_set=eval_set)

    def local(self, eval_name: str) -> str:
        """The local folder of *eval_name*: only ``[A-Za-z0-9._-]`` below the state root."""
        return os.path.join(self._local_root, slug(eval_name))

    @contextlib.contextmanager
    def folder(self, attempt: Attempt, stopping: Callable[[], bool] = lambda: False) -> Iterator[EvalFolder]:
        """The attempt's local folder, restored from the store, held while the attempt runs
        (RestoreStoppedError when *stopping* says so during the restore).
        """
        local = self.local(attempt.eval)
        with locked_folder(local, f"{local}.{self.store.writer}") as (path, fallback):
            folder = EvalFolder(self, attempt, path)
            try:
                folder.restore(stopping)
                yield folder
            finally:
                if fallback:  # nobody looks for it again
                    folder.forget_local()


class EvalFolder:
    """One attempt's state folder: restore, sync (in the background and at the end), forget."""

    def __init__(self, keeper: StateKeeper, attempt: Attempt, local: str) -> None:
        """The folder *local* of *attempt*; nothing is read or written yet."""
        self.keeper = keeper
        self.store = keeper.store
        self.attempt = attempt
        self.local = local
        self._stored = stored_folder(self.store, attempt.eval)
        self._own = f"{self._stored}/{attempt.number}"
        self._synced: dict[str, Stat] = {}  # what the attempt's stored folder holds
        self._base: dict[str, Stat] = {}  # what the restore left locally
        self._base_number: int | None = None  # the attempt it was restored from
        self._tags: dict[str, str] = {}  # the stored files restored, by their version tags then
        self._older: list[int] = []  # attempts whose folders go once this one has a marker
        self._syncs = 0  # markers written
        self._owed = False  # something was sent or deleted since the last marker
        self._closed = False  # the last sync is done: nothing more is sent
        self._lock = threading.Lock()
        self.log = keeper.log.bind(eval=attempt.eval, attempt=attempt.number)

    @property
    def stored_nothing(self) -> bool:
        """Whether the store holds no state of this eval (none restored, none sent, none older)."""
        return self._base_number is None and not self._synced and not self._older and not self._owed

    @property
    def _record(self) -> str:
        return f"{self.local}.synced.json"

    # --- restore --------------------------------------------------------------------------

    def restore(self, stopping: Callable[[], bool]) -> None:
        """Make the local folder the newest stored state of this round (empty if none); a
        leftover local folder identical to it is kept as it is.
        """
        names = self.store.backend.listdir(self._stored)
        self._older = [n for n in attempt_numbers(names) if n < self.attempt.number]
        source = self._source(names)
        if source is None:
            empty_folder(self.local)
            self._base, self._base_number = {}, None
            return
        number, marker = source
        origin = [number, marker.get("writer"), marker.get("sync")]
        record = read_record(self._record)
        if record.get("source") != origin or _files(record) != scan(self.local):
            self._download(number, stopping)
        else:
            self.store.backend.files(f"{self._stored}/{number}", self._tags)
        self._base, self._base_number = scan(self.local), number
        write_record(self._record, {"source": origin, "files": self._base})

    def _download(self, number: int, stopping: Callable[[], bool]) -> None:
        empty_folder(self.local)
        remove(self._record)
        backend = self.store.backend
        self._tags = {}
        files = backend.files(f"{self._stored}/{number}", self._tags)
        for name in sorted(files):
            if stopping():
                raise RestoreStoppedError
            target = local_path(self.local, name)
            try:
                if target is None:
                    raise NotADirectoryError(name)  # a name that would leave the folder
                os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            except OSError:  # a file and a folder of one name, both stored by a sync cut off between
                self.log.warning("state.file_skipped", file=name, why="its path clashes or leaves the folder")
                continue
            backend.download(f"{self._stored}/{number}/{name}", target)
        self.log.info("state.restored", from_attempt=number, files=len(files), bytes=sum(files.values()))

    def _source(self, names: list[str]) -> tuple[int, dict[str, object]] | None:
        for number, marker in synced_attempts(self.store, self.attempt.eval, names).items():
            if number < self.attempt.number and (self.keeper.config.keep or marker.get("epoch") == self.attempt.epoch):
                return number, marker
        return None

    # --- sync -----------------------------------------------------------------------------

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
        forget(self.store, self.attempt.eval, self._older)
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
            while not done.wait(self.keeper.config.interval):
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

    def forget_local(self) -> None:
        """Delete the local folder and its record (the stored copy is what counts now)."""
        remove(self.local)
        remove(self._record)


def _files(record: dict[str, object]) -> dict[str, Stat]:
    files = record.get("files")
    if not isinstance(files, dict):
        return {}
    return {str(name): (int(value[0]), int(value[1])) for name, value in files.items() if isinstance(value, list)}
