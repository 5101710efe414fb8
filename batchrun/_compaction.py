"""The snapshot and the progress file: folding events into ``P.d/snapshot.json``, and rewriting
``P`` from the newest snapshot only.

Why racing compactors and resets are safe:
- The snapshot is replaced only with If-Match on the tag we read, and carries the run's
  generation. A compactor whose generation is no longer the run's (the run was reset and started
  again while it worked) writes nothing: it finds the snapshot of another generation, or none,
  and ``run.json`` naming another generation, and stops.
- ``P`` is rewritten only by a compactor that still holds the newest snapshot: it reads P's tag,
  then checks that the snapshot is the one it wrote and that the run's generation is its own,
  then replaces P with If-Match on the tag it read (create-only if P was absent). A newer
  compactor's P therefore never gets overwritten with older content, and a reset (which deletes
  ``run.json`` and the snapshot before P) makes late writers fail. A compactor that passed its
  checks just before a reset and recreated P just after it finds ``run.json`` gone when it looks
  again, and deletes what it wrote.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog

from batchrun._backends import Backend
from batchrun._events import EventLog
from batchrun._state import Attempt, RunState
from batchrun.errors import ConflictError, FencedError, StoreError

_TRIES = 20
_BACKGROUND_TRIES = 2

log = structlog.get_logger("batchrun.progress")


class StaleRunError(StoreError):
    """The run was reset (and perhaps started again) while this process worked on it."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot as read: its tag (None: there is none), generation, and folded state."""

    tag: str | None
    generation: str | None
    state: RunState


class Compactor:
    """Reads and writes one run's snapshot and progress file."""

    def __init__(  # noqa: PLR0913 - the paths and callbacks of one run's store
        self,
        backend: Backend,
        *,
        snapshot_path: str,
        progress_path: str,
        events: EventLog,
        generation: Callable[[], str],
        stored_generation: Callable[[], str],
        imported: Callable[[], RunState],
    ) -> None:
        """*stored_generation* reads run.json afresh ("" without one); *imported* is the state before any snapshot."""
        self.backend = backend
        self.snapshot_path = snapshot_path
        self.progress_path = progress_path
        self.events = events
        self._generation = generation
        self._stored_generation = stored_generation
        self._imported = imported
        self._lock = threading.Lock()
        self._cached: Snapshot | None = None

    def read_snapshot(self) -> Snapshot:
        """The snapshot as stored now (parsed once per tag)."""
        cached = self._cached
        if cached is not None and cached.tag is not None and self.backend.tag(self.snapshot_path) == cached.tag:
            return cached
        blob = self.backend.read(self.snapshot_path)
        if blob is None:
            return Snapshot(None, None, self._imported())
        try:
            raw = json.loads(blob.data)
            generation = str(raw.get("generation", ""))
            state = RunState()
            if generation == self._generation():
                state.merge(Attempt.from_json(item) for item in raw["attempts"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            msg = f"corrupt progress snapshot at {self.snapshot_path}: {exc}"
            raise StoreError(msg) from None
        snapshot = Snapshot(blob.tag, generation, state)
        self._cached = snapshot
        return snapshot

    def gather(self) -> tuple[RunState, list[str], Snapshot]:
        """The run's state: events listed and read first, then the snapshot (see progress.py)."""
        names = self.events.names()
        records = self.events.read(names)
        snapshot = self.read_snapshot()
        state = snapshot.state.copy()
        state.merge(records)
        return state, names, snapshot

    def compact(self, tries: int | None = None) -> RunState:
        """Fold events into the snapshot, rewrite the progress file, delete the folded events.
        After *tries* lost races (default 20) it gives up with ConflictError: in the background,
        a lost race means another worker compacted just now, and the next round will do.
        """
        self.events.guard()  # a worker that lost its place folds nothing either
        with self._lock:
            for _ in range(tries or _TRIES):
                self.events.dirty = False
                state, names, snapshot = self.gather()
                mine = self._generation()
                if snapshot.tag is not None and snapshot.generation == mine and not names:
                    self._write_progress(state, snapshot.tag)  # repairs a P that a crash left stale
                    return state
                if snapshot.generation != mine and self._stored_generation() != mine:
                    msg = "the run was reset while this process was running; its records no longer count"
                    raise StaleRunError(msg)
                data = json.dumps(
                    {"version": 1, "generation": mine, "attempts": [a.to_json() for a in state.all_attempts()]},
                    separators=(",", ":"),
                ).encode()
                try:
                    tag = self.backend.replace(self.snapshot_path, data, snapshot.tag)
                except ConflictError:
                    time.sleep(random.uniform(0.01, 0.1))  # noqa: S311 - jitter, not crypto
                    continue
                self._cached = Snapshot(tag, mine, state)
                self._write_progress(state, tag)
                self.events.forget(names)
                return state
        msg = f"could not compact progress at {self.progress_path}: too many concurrent compactions"
        raise ConflictError(msg)

    def _write_progress(self, state: RunState, snapshot_tag: str) -> None:
        """Bring P up to date, if we still hold the newest snapshot of the run's generation."""
        data = "".join(f"{name}\n" for name in state.completed_order()).encode()
        for _ in range(_TRIES):
            current = self.backend.read(self.progress_path)
            if current is not None and current.data == data:
                return
            if self.backend.tag(self.snapshot_path) != snapshot_tag:
                return  # a newer snapshot exists (its compactor writes P) or the run was reset
            if self._stored_generation() != self._generation():
                return
            try:
                self.backend.replace(self.progress_path, data, None if current is None else current.tag)
            except ConflictError:
                continue
            if self._stored_generation() != self._generation():
                # The run was reset between our checks and our write (which recreated P after the
                # reset deleted it): take our write back, so the reset wins.
                written = self.backend.read(self.progress_path)
                if written is not None and written.data == data:
                    self.backend.delete([self.progress_path])
            return

    @contextlib.contextmanager
    def compacting(self, every: Callable[[], float], final: Callable[[], None]) -> Iterator[None]:
        """Compact in the background every ``every()`` seconds while events arrive (a fleet spreads
        its compactions: see the runner); call *final* at exit.
        """
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every()):
                if self.events.dirty:
                    try:
                        self.compact(tries=_BACKGROUND_TRIES)
                    except ConflictError:
                        pass  # others compacted meanwhile; our events go with the next round
                    except FencedError:
                        return  # another process holds this worker's place: nothing more is ours
                    except StoreError as exc:
                        log.warning("progress.compaction_failed", error=str(exc), progress=self.progress_path)

        thread = threading.Thread(target=loop, name="batchrun-compactor", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            try:
                final()  # waits for a compaction in flight through the compaction lock
            finally:
                thread.join(timeout=1.0)  # not forever: during a stop, final() gives up on a dead store

    def forget(self) -> None:
        """Drop the cached snapshot (after a reset)."""
        self._cached = None
