"""The other workers' liveness as one worker judges it: when each heartbeat object last changed,
on this process's own monotonic clock, and the declaration that a worker is dead.

Liveness costs one listing of ``workers/`` per interval (S3 returns every ETag in it); objects are
read only when they stop changing. A worker whose object has not changed for ``--worker-timeout``
seconds (or, on this host and boot, whose process is gone) is declared dead: its heartbeat is
replaced with a ``dead`` one, If-Match on what was observed, so a worker that was only stalled
finds out at its next heartbeat (fleet.py) and stops.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

import structlog

from batchrun._backends import Backend
from batchrun._heartbeat import Heartbeat
from batchrun.errors import ConflictError

_READ_AT_START = 8  # heartbeats read at once by a starting worker, if there are no more than this

log = structlog.get_logger("batchrun.fleet")


def heartbeat_name(worker: str) -> str:
    """The name of *worker*'s heartbeat object in ``workers/``."""
    from batchrun.progress import encode_key  # noqa: PLC0415 - progress imports fleet, which imports this module

    return f"{encode_key(worker)}.json"


@dataclass(slots=True)
class _Seen:
    marker: str
    since: float  # this process's monotonic clock when the marker was first listed
    content: Heartbeat | None = None  # read once the marker stopped changing
    read_marker: str = ""


@dataclass(slots=True)
class Peers:
    """One worker's view of the heartbeats in *folder*: who looks alive, who it declared dead."""

    backend: Backend
    folder: str
    worker: str  # the worker looking: its own heartbeat is not judged here
    heartbeat_s: float
    timeout_s: float
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _listed_at: float = -1e18
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def observe(self, *, force: bool = False) -> None:
        """List ``workers/`` (at most twice per heartbeat interval unless *force*) and note when
        each object last changed, on this process's clock.
        """
        with self._lock:
            now = time.monotonic()
            if not force and now - self._listed_at < self.heartbeat_s / 2:
                return
            first = self._listed_at < 0
            markers = self.backend.markers(self.folder)
            self._listed_at = now
            seen: dict[str, _Seen] = {}
            for name, marker in markers.items():
                old = self._seen.get(name)
                seen[name] = old if old is not None and old.marker == marker else _Seen(marker, now)
            self._seen = seen
        if first and len(seen) <= _READ_AT_START:
            # A process that died on this machine is known dead at once (a laptop's restart). In a
            # large fleet each worker would read every other's heartbeat: they are read when needed.
            for name in list(seen):
                self._read(name)

    def _read(self, name: str) -> Heartbeat | None:
        entry = self._seen.get(name)
        if entry is None:
            return None
        if entry.read_marker != entry.marker:
            blob = self.backend.read(f"{self.folder}/{name}")
            entry.content = None if blob is None else Heartbeat.from_bytes(blob.data)
            entry.read_marker = entry.marker
        return entry.content

    def holds(self, worker: str) -> bool:
        """Whether another *worker* may still be running: its heartbeat changed lately, or is
        live and not yet declared dead by this process.
        """
        self.observe()
        name = heartbeat_name(worker)
        with self._lock:
            entry = self._seen.get(name)
            if entry is None:  # not in our last listing: it may have joined since
                self.observe(force=True)
                entry = self._seen.get(name)
            if entry is None:
                return False  # no heartbeat: it left, or ran before workers had heartbeats
            quiet = self._listed_at - entry.since
            # Read once it stops changing (or as read on first sight, when this process started).
            known = entry.read_marker == entry.marker
            if quiet < 2 * self.heartbeat_s and not known:
                return True
            content = self._read(name)
            if content is None or content.state != "live":
                return False
            if content.process_gone():
                return not self._declare_dead(name, entry, "its process is gone from this host", gone=True)
            if quiet < self.timeout_s:
                return True
            return not self._declare_dead(name, entry, f"no heartbeat for {quiet:.0f} s")

    def _declare_dead(self, name: str, entry: _Seen, why: str, *, gone: bool = False) -> bool:
        """Replace a stalled (or, with *gone*, a vanished) worker's heartbeat with a dead one;
        False if it beat meanwhile, or another process holds the id now.
        """
        path = f"{self.folder}/{name}"
        blob = self.backend.read(path)
        if blob is None:
            return True
        current = Heartbeat.from_bytes(blob.data)
        if current is None or current.state != "live":
            return True
        if gone and not current.process_gone():
            entry.content, entry.read_marker = current, ""  # a new holder: read again next time
            return False
        if self.backend.markers(self.folder).get(name) != entry.marker:
            entry.marker, entry.since = "", time.monotonic()  # it changed: alive after all
            return False
        note = f"by worker {self.worker!r}: {why}"
        dead = replace(current, state="dead", note=note, at=time.time())
        try:
            self.backend.replace(path, dead.to_bytes(), blob.tag)
        except ConflictError:
            entry.marker, entry.since = "", time.monotonic()
            return False
        # Our own write changed the object: learn its new marker, so that the next listing does not
        # take the change for a sign of life (and wait two heartbeats before reading it again).
        marker = self.backend.markers(self.folder).get(name, "")
        again = self.backend.read(path)
        if again is not None and again.data == dead.to_bytes():
            entry.marker, entry.since = marker, time.monotonic()
        entry.content, entry.read_marker = dead, entry.marker
        log.warning("worker.declared_dead", worker=current.worker, why=why, was=current.describe())
        return True

    def others_live(self) -> int:
        """How many other workers look alive now (from the last listing; nothing is read)."""
        with self._lock:
            now = time.monotonic()
            mine = heartbeat_name(self.worker)
            return sum(
                1
                for name, entry in self._seen.items()
                if name != mine
                and now - entry.since < self.timeout_s
                and (entry.content is None or entry.read_marker != entry.marker or entry.content.state == "live")
            )
