"""The event log: attempt records written as create-only objects, one per group-commit batch, and
read back concurrently.

``P.d/events/W-NNNNNNNNN.json`` holds one JSON record per line; W is the writer's random id and N
its sequence. Each record carries the run's generation (``g``, a random id in ``run.json``), so a
writer that outlived a reset of its run writes records that the new run never reads.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import structlog

from batchrun._backends import Backend
from batchrun._recorder import GroupCommit
from batchrun._state import Attempt

EVENT_NAME = re.compile(r"^[0-9a-f]{12}-[0-9]{9}\.json$")
_READERS = 16  # events read at once (S3 GETs wait on the network, not the CPU)

log = structlog.get_logger("batchrun.progress")


class EventLog:
    """One writer's view of ``P.d/events``: what it wrote, and every writer's records."""

    def __init__(
        self, backend: Backend, folder: str, writer: str, generation: Callable[[], str], guard: Callable[[], None]
    ) -> None:
        """Write under *folder* as *writer*; records are stamped with ``generation()``; *guard* runs
        before every write (it raises once this process may write no more).
        """
        self.backend = backend
        self.folder = folder
        self.writer = writer
        self._generation = generation
        self._seq = 0
        self._lock = threading.Lock()
        self.guard = guard
        self._own: dict[str, list[Attempt]] = {}  # events we wrote and have not yet seen deleted
        self._seen: dict[str, list[Attempt]] = {}  # others' events read so far (create-only: never change)
        self.recorder: GroupCommit[Attempt] = GroupCommit(self._write)
        self.dirty = False  # written since the last compaction began

    def submit(self, attempt: Attempt, *, urgent: bool) -> Future[None]:
        """Queue *attempt* for the next batch; the future resolves once it is durable."""
        return self.recorder.submit(attempt, urgent=urgent)

    def _write(self, attempts: Sequence[Attempt]) -> None:
        self.guard()
        with self._lock:
            self._seq += 1
            name = f"{self.writer}-{self._seq:09d}.json"
        generation = self._generation()
        stamp = {"g": generation} if generation else {}
        data = "\n".join(json.dumps({**a.to_json(), **stamp}, separators=(",", ":")) for a in attempts).encode()
        self.backend.create(f"{self.folder}/{name}", data, durable=True)
        with self._lock:
            self._own[name] = list(attempts)
            self.dirty = True

    def names(self) -> list[str]:
        """The event objects stored now."""
        return [n for n in self.backend.listdir(self.folder) if EVENT_NAME.match(n)]

    def read(self, names: list[str]) -> list[Attempt]:
        """The records of this generation in the events *names*; ours come from memory, the rest
        are read concurrently. An event deleted since it was listed was folded: it is skipped.
        """
        with self._lock:
            own = {
                name: self._own.get(name) or self._seen[name]
                for name in names
                if name in self._own or name in self._seen
            }
        records = [attempt for batch in own.values() for attempt in batch]
        others = [name for name in names if name not in own]
        if len(others) <= 1:
            batches = [self._read_one(name) for name in others]
        else:
            with ThreadPoolExecutor(min(_READERS, len(others)), thread_name_prefix="batchrun-read") as pool:
                batches = list(pool.map(self._read_one, others))
        with self._lock:
            listed = set(names)
            self._seen = {name: batch for name, batch in self._seen.items() if name in listed}
            self._seen.update((name, batch) for name, batch in zip(others, batches, strict=True) if batch)
        for batch in batches:
            records.extend(batch)
        return records

    def _read_one(self, name: str) -> list[Attempt]:
        blob = self.backend.read(f"{self.folder}/{name}")
        if blob is None:
            return []  # folded and deleted by a compactor since we listed it
        generation = self._generation()
        try:
            rows = [json.loads(line) for line in blob.data.splitlines() if line.strip()]
            return [Attempt.from_json(row) for row in rows if row.get("g", "") == generation]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("progress.event_unreadable", event=name, folder=self.folder)
            return []

    def forget(self, names: list[str]) -> None:
        """Delete folded events (and stop serving them from memory)."""
        self.backend.delete([f"{self.folder}/{name}" for name in names])
        with self._lock:
            for name in names:
                self._own.pop(name, None)
                self._seen.pop(name, None)

    def clear(self) -> None:
        """Forget every event of ours (after a reset)."""
        with self._lock:
            self._own.clear()
            self._seen.clear()
