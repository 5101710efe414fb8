"""Many processes on one run: worker identity, heartbeats and fencing (the others' liveness, as
one worker judges it, is _liveness.py).

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

Nothing here knows evals: the scheduler asks :meth:`Fleet.holds`.
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
from batchrun._liveness import Peers, heartbeat_name
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
class Fleet:
    """One worker's membership (heartbeat, fencing) and its view of the others' liveness (Peers)."""

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
    _beat_lock: threading.RLock = field(default_factory=threading.RLock)  # one heartbeat write at a time
    _peers: Peers = field(init=False)  # the view of the others

    def __post_init__(self) -> None:
        """The view of the others starts empty: nothing is listed or read yet."""
        self._peers = Peers(self.backend, self.folder, self.worker, self.heartbeat_s, self.timeout_s)

    @property
    def path(self) -> str:
        """The object of this worker's heartbeat."""
        return f"{self.folder}/{heartbeat_name(self.worker)}"

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

    # --- the others (_liveness) ------------------------------------------------------------

    def observe(self, *, force: bool = False) -> None:
        """List the others' heartbeats, if due (:meth:`Peers.observe`)."""
        self._peers.observe(force=force)

    def holds(self, worker: str, writer: str) -> bool:
        """Whether the attempt of *worker* written by process *writer* may still be running."""
        if worker == self.worker:
            if writer == self.writer:
                return True
            if time.monotonic() < self._defer_until:
                return True
            return self._taken_over()  # an earlier holder of our id, or one that took our place just now
        return self._peers.holds(worker)

    def others_live(self) -> int:
        """How many other workers look alive now (:meth:`Peers.others_live`)."""
        return self._peers.others_live()
