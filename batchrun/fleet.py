"""Many processes on one run: worker identity, heartbeats, liveness and fencing.

Each `batchrun run` process is a *worker* with an id (``--worker-id``; on Kubernetes the Job's
name and the pod's completion index) and keeps one heartbeat object, ``P.d/workers/W.json``,
rewritten every ``--heartbeat`` seconds with If-Match on the tag of its own last write. That
object is also the worker's fencing register: whoever ends a worker's tenure does so with a
conditional write on it, and the holder's next heartbeat fails and tells it so.

- A new process with an id in use takes the object over at once (If-Match on what it read, a
  bumped ``token``); the old holder, if alive, is fenced at its next heartbeat.
- Another worker that has seen the object unchanged for ``--worker-timeout`` seconds on its *own*
  monotonic clock (wall clocks of two pods are never compared) declares the worker dead: it
  replaces the object it observed with a ``dead`` one (If-Match), so a worker that was only
  stalled (SIGSTOP, a long GC, a partition) finds out at its next heartbeat and stops.
  A worker on the same host and boot whose process is gone is declared dead at once.
- An orderly stop marks the object ``left`` (If-Match) and deletes it.

Liveness costs one listing of ``workers/`` per interval (S3 returns every ETag in it); objects are
read only when they stop changing. Nothing here knows evals: the scheduler asks :meth:`Fleet.holds`.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from batchrun._backends import Backend
from batchrun._heartbeat import Heartbeat, boot_id, pid_namespace, process_start
from batchrun.errors import BadInputError, ConflictError, FencedError, StoreError

__all__ = [
    "HEARTBEAT_S",
    "WORKER_TIMEOUT_S",
    "Fleet",
    "Heartbeat",
    "check_timing",
    "check_worker_id",
    "default_worker_id",
]

HEARTBEAT_S = 10.0
WORKER_TIMEOUT_S = 60.0
_ID_MAX = 100
_BAD_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}  # controls, surrogates (undecodable bytes), line breaks
HEARTBEAT_MIN_S = 0.1
_TRIES = 20
_READ_AT_START = 8  # heartbeats read at once by a starting worker, if there are no more than this

log = structlog.get_logger("batchrun.fleet")


def default_worker_id(env: Mapping[str, str] | None = None, host: str | None = None) -> str:
    """BATCHRUN_WORKER_ID is read by the command line; this is the default behind it: an Indexed
    Job's pod is ``<job>-<index>`` (stable across replacements), anything else the host name plus
    a random suffix, so two processes on one machine share a run instead of fencing each other.
    """
    env = os.environ if env is None else env
    host = socket.gethostname() if host is None else host
    index = env.get("JOB_COMPLETION_INDEX", "")
    if index.isdigit():
        job = env.get("JOB_NAME") or host.removesuffix(f"-{index}")  # Indexed Job pods: <job>-<index>
        return f"{job}-{index}"
    return f"{host}-{secrets.token_hex(3)}"


def _name(worker: str) -> str:
    """The name of *worker*'s heartbeat object in ``workers/``."""
    from batchrun.progress import encode_key  # noqa: PLC0415 - progress imports this module

    return f"{encode_key(worker)}.json"


def check_worker_id(worker_id: str) -> str:
    """The id, or BadInputError: not blank, at most 100 characters, no ``/``, no control or
    line-breaking characters, valid Unicode (an undecodable byte of the command line is not).
    """
    if not worker_id.strip():
        raise BadInputError("--worker-id can't be empty")
    if len(worker_id) > _ID_MAX:
        raise BadInputError(f"--worker-id is {len(worker_id)} characters long; at most {_ID_MAX} are allowed")
    if "/" in worker_id:
        raise BadInputError(f"--worker-id {worker_id!r} contains '/'")
    if any(unicodedata.category(ch) in _BAD_CATEGORIES for ch in worker_id):
        raise BadInputError(f"--worker-id {worker_id!r} contains a control character or an undecodable byte")
    return worker_id


def check_timing(heartbeat: float, timeout: float) -> None:
    """--heartbeat must be positive and --worker-timeout more than twice it."""
    if not HEARTBEAT_MIN_S <= heartbeat < float("inf"):
        raise BadInputError(f"--heartbeat must be at least {HEARTBEAT_MIN_S:g} s, got {heartbeat:g}")
    if not 2 * heartbeat < timeout < float("inf"):
        msg = f"--worker-timeout must be more than twice --heartbeat ({2 * heartbeat:g} s), got {timeout:g}"
        raise BadInputError(msg)


@dataclass(slots=True)
class _Seen:
    marker: str
    since: float  # this process's monotonic clock when the marker was first listed
    content: Heartbeat | None = None  # read once the marker stopped changing
    read_marker: str = ""


@dataclass(slots=True)
class Fleet:
    """One worker's membership (heartbeat, fencing) and its view of the others' liveness."""

    backend: Backend
    folder: str
    worker: str
    writer: str
    heartbeat_s: float = HEARTBEAT_S
    timeout_s: float = WORKER_TIMEOUT_S
    status: Callable[[], tuple[tuple[str, ...], int]] = lambda: ((), 0)  # (running evals, completed)
    predecessor: Heartbeat | None = None
    fenced: FencedError | None = None
    _tag: str | None = None
    _beat: Heartbeat | None = None
    _last_ok: float = 0.0  # monotonic time the last successful heartbeat was *sent*
    _defer_until: float = 0.0  # the predecessor's attempts count as running until then
    _left: bool = False
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _listed_at: float = -1e18
    _lock: threading.RLock = field(default_factory=threading.RLock)  # the view of the others
    _beat_lock: threading.RLock = field(default_factory=threading.RLock)  # one heartbeat write at a time

    @property
    def path(self) -> str:
        """The object of this worker's heartbeat."""
        return f"{self.folder}/{_name(self.worker)}"

    # --- membership -----------------------------------------------------------------------

    def join(self, grace: float) -> None:
        """Write this worker's first heartbeat, taking the id over from a previous holder. A
        predecessor that may still be alive keeps its attempts for a heartbeat plus *grace* (it
        stops them when its next heartbeat tells it it was fenced).
        """
        with self._beat_lock:
            for _ in range(_TRIES):
                blob = self.backend.read(self.path)
                old = None if blob is None else Heartbeat.from_bytes(blob.data)
                token = (old.token + 1) if old is not None else 1
                beat = self._content(token=token, beat=0, started_at=time.time())
                sent = time.monotonic()
                try:
                    self._tag = self.backend.replace(self.path, beat.to_bytes(), None if blob is None else blob.tag)
                except ConflictError:
                    continue
                self._beat, self._last_ok = beat, sent
                if old is not None and old.state == "live" and not old.process_gone():
                    # The holder we replace, if alive, stops within a lease (two heartbeats, or
                    # before its next write) plus --grace: attempts of our id wait until then. A
                    # holder that left or was declared dead gave every earlier one that long.
                    self._defer_until = time.monotonic() + max(self.heartbeat_s + grace, self.lease_s) + 5.0
                if old is not None and old.state != "left" and old.writer != self.writer:
                    self.predecessor = old
                    log.warning("worker.took_over", worker=self.worker, previous=old.describe(), was=old.state)
                return
        raise StoreError(f"could not register worker {self.worker!r}: too many concurrent changes")

    def _content(self, **changes: Any) -> Heartbeat:  # noqa: ANN401 - Heartbeat fields
        running, completed = self.status()
        base = self._beat or Heartbeat(
            worker=self.worker,
            writer=self.writer,
            token=1,
            state="live",
            host=socket.gethostname(),
            pid=os.getpid(),
            boot=boot_id(),
            process_start=process_start(os.getpid()),
            pid_ns=pid_namespace(),
        )
        return replace(base, at=time.time(), running=running, completed=completed, **changes)

    def beat(self) -> None:
        """Rewrite the heartbeat (If-Match on our last write); FencedError if another took our place."""
        with self._beat_lock:  # not the view's lock: a slow store must not hold up confirm()
            if self.fenced is not None:
                raise self.fenced
            if self._left:
                return
            assert self._beat is not None, "join() first"  # noqa: S101 - a programming error
            beat = self._content(beat=self._beat.beat + 1)
            sent = time.monotonic()
            try:
                self._tag = self.backend.replace(self.path, beat.to_bytes(), self._tag)
            except ConflictError:
                self.fenced = FencedError(self._why_fenced())
                raise self.fenced from None
            self._beat, self._last_ok = beat, sent

    def _why_fenced(self) -> str:
        blob = self.backend.read(self.path)
        now = None if blob is None else Heartbeat.from_bytes(blob.data)
        if now is None:
            return f"worker {self.worker!r}: its heartbeat was deleted (the run was reset?); this process stopped"
        if now.state == "dead":
            return f"worker {self.worker!r} was declared dead ({now.note}); this process stopped"
        return f"worker {self.worker!r} was taken over by {now.describe()}; this process stopped"

    def _taken_over(self) -> bool:
        """Whether another process holds our id now (read, not assumed: it may have taken it over
        since our last heartbeat); if so this process is fenced.
        """
        if self.fenced is None:
            blob = self.backend.read(self.path)
            current = None if blob is None else Heartbeat.from_bytes(blob.data)
            if current is not None and current.writer == self.writer and current.state == "live":
                return False
            self.fenced = FencedError(self._why_fenced())
        return True

    @property
    def lease_s(self) -> float:
        """How long a successful heartbeat vouches for this process: two intervals. Others take
        our place only later (--worker-timeout is more than that; a successor waits longer).
        """
        return 2 * self.heartbeat_s

    def confirm(self) -> None:
        """Before a write: FencedError if this worker lost its place. Without a heartbeat sent
        within the lease (the process was stalled, or beats are slow), beat first to find out.
        """
        if self.fenced is not None:
            raise self.fenced
        if time.monotonic() - self._last_ok > self.lease_s:
            with self._beat_lock:  # a beat in flight may renew the lease meanwhile
                if time.monotonic() - self._last_ok > self.lease_s:
                    self.beat()

    def leave(self) -> None:
        """An orderly stop: mark the heartbeat left (If-Match), then delete it (not while an earlier
        holder of our id may still be stopping).
        """
        with self._beat_lock:
            if self.fenced is not None or self._beat is None or self._left:
                return
            self._left = True
            if time.monotonic() < self._defer_until:
                # An earlier holder of our id may still be stopping: leave the heartbeat to go stale,
                # so others wait --worker-timeout (by then it has stopped) instead of taking its evals.
                return
            try:
                self._tag = self.backend.replace(self.path, self._content(state="left").to_bytes(), self._tag)
                self.backend.delete([self.path])
            except StoreError as exc:  # the others find out by the timeout instead
                log.warning("worker.leave_failed", worker=self.worker, error=str(exc))

    @contextlib.contextmanager
    def beating(
        self, on_fenced: Callable[[FencedError], None], on_error: Callable[[StoreError], None]
    ) -> Iterator[None]:
        """Heartbeat in the background (and keep the view of the others fresh) while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.heartbeat_s * random.uniform(0.9, 1.0)):  # noqa: S311 - jitter
                try:
                    self.beat()
                    self.observe()
                except FencedError as exc:
                    on_fenced(exc)
                    return
                except StoreError as exc:
                    on_error(exc)
                    return

        thread = threading.Thread(target=loop, name="batchrun-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=1.0)

    # --- the others -----------------------------------------------------------------------

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

    def holds(self, worker: str, writer: str) -> bool:  # noqa: PLR0911 - one answer per case, in order
        """Whether the attempt of *worker* written by process *writer* may still be running."""
        if worker == self.worker:
            if writer == self.writer:
                return True
            if time.monotonic() < self._defer_until:
                return True
            return self._taken_over()  # an earlier holder of our id, or one that took our place just now
        self.observe()
        name = _name(worker)
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
            mine = _name(self.worker)
            return sum(
                1
                for name, entry in self._seen.items()
                if name != mine
                and now - entry.since < self.timeout_s
                and (entry.content is None or entry.read_marker != entry.marker or entry.content.state == "live")
            )
