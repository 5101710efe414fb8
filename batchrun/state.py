"""An eval's state folder, carried between pods: restored before each attempt, synced while it
runs and once more when it ends (_statesync.py), kept as the eval's results when it completes
(results.py).

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
import functools
import json
import os
from collections.abc import Callable, Iterator

import structlog

from batchrun._state import Attempt
from batchrun._statefiles import (
    Stat,
    empty_folder,
    local_path,
    locked_folder,
    private_folder,
    read_record,
    remove,
    scan,
    slug,
    write_record,
)
from batchrun._statesync import FolderSync
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
    """One attempt's state folder: restore, sync (_statesync: in the background and at the end), forget."""

    def __init__(self, keeper: StateKeeper, attempt: Attempt, local: str) -> None:
        """The folder *local* of *attempt*; nothing is read or written yet."""
        self.keeper = keeper
        self.store = keeper.store
        self.attempt = attempt
        self.local = local
        self._stored = stored_folder(self.store, attempt.eval)
        self.log = keeper.log.bind(eval=attempt.eval, attempt=attempt.number)
        self._sync = FolderSync(
            self.store,
            attempt,
            local,
            self._stored,
            record=self._record,
            interval=keeper.config.interval,
            forget=functools.partial(forget, self.store, attempt.eval),
            log=self.log,
        )

    @property
    def stored_nothing(self) -> bool:
        """Whether the store holds no state of this eval (none restored, none sent, none older)."""
        return self._sync.stored_nothing

    @property
    def _record(self) -> str:
        return f"{self.local}.synced.json"

    # --- restore --------------------------------------------------------------------------

    def restore(self, stopping: Callable[[], bool]) -> None:
        """Make the local folder the newest stored state of this round (empty if none); a
        leftover local folder identical to it is kept as it is.
        """
        names = self.store.backend.listdir(self._stored)
        older = [n for n in attempt_numbers(names) if n < self.attempt.number]
        source = self._source(names)
        if source is None:
            empty_folder(self.local)
            self._sync.restored(None, {}, {}, older)
            return
        number, marker = source
        origin = [number, marker.get("writer"), marker.get("sync")]
        record = read_record(self._record)
        tags: dict[str, str] = {}  # the stored files restored, by their version tags now
        if record.get("source") != origin or _files(record) != scan(self.local):
            self._download(number, tags, stopping)
        else:
            self.store.backend.files(f"{self._stored}/{number}", tags)
        base = scan(self.local)
        self._sync.restored(number, base, tags, older)
        write_record(self._record, {"source": origin, "files": base})

    def _download(self, number: int, tags: dict[str, str], stopping: Callable[[], bool]) -> None:
        empty_folder(self.local)
        remove(self._record)
        backend = self.store.backend
        files = backend.files(f"{self._stored}/{number}", tags)
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

    # --- sync (_statesync) -----------------------------------------------------------------

    def sync(self, *, force: bool = False, final: bool = False) -> bool:
        """One sync (:meth:`FolderSync.sync`); True if anything was sent."""
        return self._sync.sync(force=force, final=final)

    def last_sync(self, *, force: bool, timeout: float | None) -> bool:
        """The final sync (:meth:`FolderSync.last_sync`); False if *timeout* cut it short."""
        return self._sync.last_sync(force=force, timeout=timeout)

    def syncing(self) -> contextlib.AbstractContextManager[None]:
        """Sync every interval in the background while the block runs (:meth:`FolderSync.syncing`)."""
        return self._sync.syncing()

    def forget_local(self) -> None:
        """Delete the local folder and its record (the stored copy is what counts now)."""
        remove(self.local)
        remove(self._record)


def _files(record: dict[str, object]) -> dict[str, Stat]:
    files = record.get("files")
    if not isinstance(files, dict):
        return {}
    return {str(name): (int(value[0]), int(value[1])) for name, value in files.items() if isinstance(value, list)}
