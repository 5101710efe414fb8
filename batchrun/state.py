"""An eval's state folder, carried between pods: restored before each attempt, synced while it
runs and once more when it ends, kept as the eval's results when it completes (results.py).

Only evals whose command uses ``{state}`` (or a run with ``--state``) have one. In the store,
for an eval whose key is K (:func:`batchrun.progress.encode_key`)::

    P.d/state/K/N/...    the folder as attempt N last synced it
    P.d/state/K/N.json   written after each complete sync of attempt N: {attempt, epoch, sync, ...}
    P.d/results/K/...    the folder of the attempt that completed

Each attempt syncs under its own number, and attempt numbers are unique across workers (claims):
a worker that lost its claim, still stopping, writes only under its own number and can never
overwrite the state of the eval's new holder. An attempt restores from the newest attempt of its
round that has a marker; once its own first sync has a marker, older attempts' folders go.
Unchanged files of that first sync are copied inside the store, not sent again.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator

import structlog

from batchrun._state import Attempt
from batchrun._statefiles import Stat, empty_folder, local_path, locked_folder, plan_sync, remove, scan, slug
from batchrun.errors import FencedError, StoreError
from batchrun.plan import StateConfig
from batchrun.progress import ProgressStore, encode_key

NEW_FILE_ROUNDS = 3  # files that appear during a sync's sends are sent in the same sync, this many times

Log = structlog.typing.FilteringBoundLogger


def stored_folder(store: ProgressStore, eval_name: str) -> str:
    """Where the attempts of *eval_name* sync their state."""
    return f"{store.location.sidecar}/state/{encode_key(eval_name)}"


def results_folder(store: ProgressStore, eval_name: str) -> str:
    """Where the state of *eval_name*'s completed attempt is kept."""
    return f"{store.location.sidecar}/results/{encode_key(eval_name)}"


def synced_attempts(
    store: ProgressStore, eval_name: str, names: list[str] | None = None
) -> dict[int, dict[str, object]]:
    """The attempts of *eval_name* with a complete sync stored, newest first, with their markers
    (*names*: the listing of its folder, if already made).
    """
    folder = stored_folder(store, eval_name)
    names = store.backend.listdir(folder) if names is None else names
    numbers = sorted((int(n.removesuffix(".json")) for n in names if _is_marker(n)), reverse=True)
    markers: dict[int, dict[str, object]] = {}
    for number in numbers:
        blob = store.backend.read(f"{folder}/{number}.json")
        if blob is not None:
            with contextlib.suppress(ValueError):
                value = json.loads(blob.data)
                markers[number] = value if isinstance(value, dict) else {}
    return markers


def _is_marker(name: str) -> bool:
    return name.endswith(".json") and name.removesuffix(".json").isdigit()


class StateKeeper:
    """The state folders of one run's evals."""

    def __init__(self, store: ProgressStore, config: StateConfig, model: str, eval_set: str) -> None:
        """Keep state for the evals of (*model*, *eval_set*) in *store*, as *config* says."""
        self.store = store
        self.config = config
        self._local_root = os.path.join(config.root, f"{slug(model)}.{slug(eval_set)}")
        self.log: Log = structlog.get_logger("batchrun").bind(model=model, eval_set=eval_set)

    def local(self, eval_name: str) -> str:
        """The local folder of *eval_name*: only ``[A-Za-z0-9._-]`` below the state root."""
        return os.path.join(self._local_root, slug(eval_name))

    @contextlib.contextmanager
    def folder(self, attempt: Attempt) -> Iterator[EvalFolder]:
        """The attempt's local folder, restored from the store, held while the attempt runs."""
        local = self.local(attempt.eval)
        with locked_folder(local, f"{local}~{self.store.writer}") as path:
            folder = EvalFolder(self, attempt, path)
            folder.restore()
            yield folder


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
        self._older: list[int] = []  # attempts whose folders go once this one has a marker
        self._syncs = 0
        self._lock = threading.Lock()
        self.log = keeper.log.bind(eval=attempt.eval, attempt=attempt.number)

    @property
    def stored_nothing(self) -> bool:
        """Whether the store holds no state of this eval (none restored, none sent, none older)."""
        return self._base_number is None and not self._synced and not self._older

    @property
    def _record(self) -> str:
        return f"{self.local}.synced.json"

    # --- restore --------------------------------------------------------------------------

    def restore(self) -> None:
        """Make the local folder the newest stored state of this round (empty if none); a
        leftover local folder identical to it is kept as it is.
        """
        backend = self.store.backend
        names = backend.listdir(self._stored)
        numbers = {int(n.removesuffix(".json")) for n in names if n.removesuffix(".json").isdigit()}
        self._older = sorted(n for n in numbers if n < self.attempt.number)
        source = self._source(names)
        if source is None:
            empty_folder(self.local)
            self._base, self._base_number = {}, None
        else:
            number, marker = source
            if not self._identical(number, marker):
                empty_folder(self.local)
                files = backend.files(f"{self._stored}/{number}")
                for name in sorted(files):
                    target = local_path(self.local, name)
                    if target is not None:
                        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
                        backend.download(f"{self._stored}/{number}/{name}", target)
                self.log.info("state.restored", from_attempt=number, files=len(files), bytes=sum(files.values()))
            self._base, self._base_number = scan(self.local), number
            self._write_record(number, marker)

    def _source(self, names: list[str]) -> tuple[int, dict[str, object]] | None:
        for number, marker in synced_attempts(self.store, self.attempt.eval, names).items():
            if number < self.attempt.number and (self.keeper.config.keep or marker.get("epoch") == self.attempt.epoch):
                return number, marker
        return None

    def _identical(self, number: int, marker: dict[str, object]) -> bool:
        try:
            with open(self._record, encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict) or record.get("source") != [number, marker.get("writer"), marker.get("sync")]:
            return False
        files = {name: tuple(value) for name, value in dict(record.get("files", {})).items()}
        return files == scan(self.local)

    def _write_record(self, number: int, marker: dict[str, object]) -> None:
        record = {"source": [number, marker.get("writer"), marker.get("sync")], "files": scan(self.local)}
        tmp = f"{self._record}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, self._record)

    # --- sync -----------------------------------------------------------------------------

    def sync(self, *, force: bool = False) -> bool:
        """Send what changed since the last sync (module docstring of _statefiles for the order);
        True if anything was sent. Until the folder changes after its restore, the restored-from
        attempt stays the stored truth and nothing is sent, unless *force*.
        """
        with self._lock:
            current = scan(self.local)
            unchanged = current == self._base and not force  # the restored-from attempt is still the truth
            empty = not current and self.stored_nothing  # nothing here, nothing stored: nothing to say
            if not self._syncs and (unchanged or empty):
                return False
            plan = plan_sync(current, self._synced)
            if not plan and self._syncs:
                return False
            started, sent = time.monotonic(), 0
            for _ in range(NEW_FILE_ROUNDS + 1):  # files that appeared meanwhile go before changed ones
                if not plan.new:
                    break
                sent += sum(self._send(name, current[name]) for name in plan.new)
                current = scan(self.local)
                plan = plan_sync(current, self._synced)
            sent += sum(self._send(name, current[name]) for name in plan.changed)
            if plan.gone:
                self.store.guard()
                self.store.backend.delete([f"{self._own}/{name}" for name in plan.gone])
                for name in plan.gone:
                    del self._synced[name]
            self._syncs += 1
            marker = self._write_marker()
            if self._syncs == 1:
                self._forget_older()
            self._write_record(self.attempt.number, marker)
            self.log.debug(
                "state.synced", sent=sent, deleted=len(plan.gone), duration_s=round(time.monotonic() - started, 3)
            )
            return True

    def _send(self, name: str, info: Stat) -> int:
        path = os.path.join(self.local, *name.split("/"))
        self.store.guard()
        backend = self.store.backend
        try:
            if self._base_number is not None and name not in self._synced and self._base.get(name) == info:
                backend.copy(f"{self._stored}/{self._base_number}/{name}", f"{self._own}/{name}")
            else:
                backend.upload(path, f"{self._own}/{name}")
        except StoreError:
            if not os.path.lexists(path):
                return 0  # deleted while we sent it: the next sync deletes it in the store too
            raise
        self._synced[name] = info
        return 1

    def _write_marker(self) -> dict[str, object]:
        marker: dict[str, object] = {
            "attempt": self.attempt.number,
            "epoch": self.attempt.epoch,
            "writer": self.store.writer,
            "worker": self.store.worker,
            "sync": self._syncs,
            "synced_at": time.time(),
            "files": len(self._synced),
            "bytes": sum(size for size, _ in self._synced.values()),
        }
        self.store.guard()
        self.store.backend.write(f"{self._stored}/{self.attempt.number}.json", json.dumps(marker).encode())
        return marker

    def _forget_older(self) -> None:
        """Once this attempt's folder is whole, the older ones are no longer needed (marker first, so
        nobody restores from a folder half deleted).
        """
        backend = self.store.backend
        for number in self._older:
            self.store.guard()
            backend.delete([f"{self._stored}/{number}.json"])
            backend.delete_tree(f"{self._stored}/{number}")
        self._older = []

    def last_sync(self, *, force: bool, timeout: float | None) -> bool:
        """:meth:`sync`; with a *timeout*, False if it has not finished by then (it goes on in the
        background until the process exits: every file it sends is whole).
        """
        if timeout is None:
            self.sync(force=force)
            return True
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.sync(force=force)
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
        """Sync every interval in the background while the attempt runs."""
        done = threading.Event()

        def loop() -> None:
            while not done.wait(self.keeper.config.interval):
                try:
                    self.sync()
                except StoreError as exc:  # tried again at the next interval
                    self.log.warning("state.sync_failed", error=str(exc))
                except FencedError:
                    return  # another process holds this worker's place: nothing more is ours

        thread = threading.Thread(target=loop, name="batchrun-state-sync", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def forget_local(self) -> None:
        """Delete the local folder and its record (the stored copy is what counts now)."""
        remove(self.local)
        remove(self._record)
