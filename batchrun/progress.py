"""The progress store: where a run's completions live, safe for several writers and restarts.

Layout, for a progress URI ``P``::

    P                           completed eval names, one per line (rewritten by compaction)
    P.d/run.json                the run's identity (model, set, command, extra args, evals)
    P.d/snapshot.json           every attempt folded so far; replaced only with If-Match
    P.d/events/W-NNNNNNNNN.json one create-only object per batch of attempt records,
                                W a writer's random id, N its sequence (see _events.py)
    P.d/claims/G/EVAL/N.json    created create-only before attempt N of EVAL starts: attempt
                                numbers are unique across writers (G: the run's generation)
    P.d/logs/EVAL/N.log         the output of attempt N
    P.d/workers/W.json          worker W's heartbeat and fencing register (fleet.py)

EVAL in a key is percent-encoded, and hash-shortened when long (:func:`encode_key`).

Recording costs one create-only PUT. Loading lists ``events/``, reads the events there, then
the snapshot, in that order: an event deleted before we read it was folded into a snapshot
written before the deletion, so the snapshot we read next has it. Records are keyed by attempt
id, so folding one twice is harmless and compactors may race (_compaction.py says how). Each
`run` of a store records under the generation in ``run.json``; a reset deletes it, so a writer
that outlives a reset writes what no later run reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from batchrun._backends import Backend, open_backend
from batchrun._compaction import Compactor
from batchrun._events import EventLog
from batchrun._foreign import check_importable, imported_attempts
from batchrun._heartbeat import Heartbeat, read_workers
from batchrun._identity import RunIdentity, claim_identity, command_may_change, read_identity
from batchrun._state import Attempt, RunState
from batchrun.errors import AttemptTakenError, ConflictError
from batchrun.fleet import Fleet
from batchrun.location import ProgressLocation

_CLAIM_TRIES = 20
_TAIL_LINE_CHARS = 500
_KEY_BYTES = 120  # longer encoded names are cut and given a hash: file names stop at 255 bytes


def encode_key(name: str) -> str:
    """An eval name as one safe key segment: percent-encoded, with no leading dot, and at most
    about 140 bytes (a long name keeps a readable start plus a hash of the whole name).
    """
    encoded = quote(name, safe="")
    encoded = "%2E" + encoded[1:] if encoded.startswith(".") else encoded
    if len(encoded) <= _KEY_BYTES:
        return encoded
    start = encoded[:_KEY_BYTES]
    cut = start.rfind("%", len(start) - 2)
    start = start[:cut] if cut != -1 else start  # never end on half an escape
    return f"{start}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _no_guard() -> None:
    pass


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _trimmed(attempt: Attempt) -> Attempt:
    """Keep event objects small: the full output is in logs/, the record keeps short last lines."""
    if not any(len(line) > _TAIL_LINE_CHARS for line in attempt.tail):
        return attempt
    return replace(attempt, tail=tuple(line[:_TAIL_LINE_CHARS] for line in attempt.tail))


class ProgressStore:
    """One run's progress at one location; thread-safe; see the module docstring for the layout."""

    def __init__(self, location: ProgressLocation, backend: Backend) -> None:
        """Use *backend* for *location*; :meth:`open` picks the backend from the URI."""
        self.location = location
        self.writer = uuid.uuid4().hex[:12]
        self.worker = socket.gethostname()  # the worker id its attempts are recorded under
        self.guard: Callable[[], None] = _no_guard  # raises FencedError once this worker lost its place
        self._attempts = 0  # attempts started
        self._lock = threading.Lock()
        self._identity: RunIdentity | None = None
        self._identity_known = False
        self._identity_lock = threading.Lock()
        self._events = EventLog(backend, location.events, self.writer, self.generation, self._check)
        self._compactor = Compactor(
            backend,
            snapshot_path=f"{location.sidecar}/snapshot.json",
            progress_path=location.path,
            events=self._events,
            generation=self.generation,
            stored_generation=self.stored_generation,
            imported=self._imported,
        )
        self._backend = backend
        self.pending_events = 0  # events not yet folded, as of the last load

    def _check(self) -> None:
        self.guard()

    def fleet(self, worker: str, heartbeat: float, timeout: float) -> Fleet:
        """Join this store's workers as *worker*: attempts are recorded under that id, and every
        write first checks that no other process took this worker's place (fleet.py).
        """
        self.worker = worker
        fleet = Fleet(self.backend, f"{self.location.sidecar}/workers", worker, self.writer, heartbeat, timeout)
        self.guard = fleet.confirm
        return fleet

    def workers(self) -> list[Heartbeat]:
        """Every worker's heartbeat as stored now."""
        return read_workers(self.backend, f"{self.location.sidecar}/workers")

    @classmethod
    def open(cls, location: ProgressLocation, storage_options: Mapping[str, Any] | None = None) -> ProgressStore:
        """Connect to the filesystem of *location* (nothing is read or written yet)."""
        return cls(location, open_backend(location.protocol, storage_options or {}))

    @property
    def backend(self) -> Backend:
        """The storage backend (tests swap in wrappers that count or fail calls)."""
        return self._backend

    @backend.setter
    def backend(self, backend: Backend) -> None:
        self._backend = self._events.backend = self._compactor.backend = backend

    # --- identity -------------------------------------------------------------------------

    @property
    def _identity_path(self) -> str:
        return f"{self.location.sidecar}/run.json"

    def identity(self) -> RunIdentity | None:
        """The identity stored by the run's first `run`, or None if there is none yet."""
        return read_identity(self.backend, self._identity_path, self.location.uri)

    def generation(self) -> str:
        """The generation this store records under: its run's, read once ("" before any run)."""
        with self._identity_lock:
            if not self._identity_known:
                self._identity, self._identity_known = self.identity(), True
        return "" if self._identity is None else self._identity.generation

    def stored_generation(self) -> str:
        """The generation stored now (a reset changes it: a process that outlived one sees it differ)."""
        identity = self.identity()
        return "" if identity is None else identity.generation

    def check_importable(self) -> None:
        """Refuse (BadInputError) a file at the progress URI that is neither ours nor oaievalset's."""
        if self.identity() is not None:
            return
        blob = self.backend.read(self.location.path)
        if blob is not None:
            check_importable(blob.data, self.location.uri)

    def claim(self, identity: RunIdentity) -> str | None:
        """Make *identity* this store's run, or refuse if the store holds a different run; the
        change of command or extra args it took (see _identity.command_may_change), if any.
        """
        may_change = lambda: command_may_change(self.load(), self.workers())  # noqa: E731 - read only when needed
        claimed, changed = claim_identity(self.backend, self._identity_path, identity, self.location.uri, may_change)
        self._identity, self._identity_known = claimed, True
        return changed

    # --- recording ------------------------------------------------------------------------

    def start(self, eval_name: str, number: int, epoch: int = 0, *, alone: bool = False) -> Attempt:
        """Claim attempt *number* and record its start; it counts even if the pod is lost before it ends."""
        attempt, written = self.start_later(eval_name, number, epoch, alone=alone)
        written.result()
        return attempt

    def start_later(
        self, eval_name: str, number: int, epoch: int = 0, *, alone: bool = False
    ) -> tuple[Attempt, Future[None]]:
        """Claim attempt *number* of *eval_name* (create-only; AttemptTakenError if another writer
        has it), then write its start without waiting: the caller may launch the process meanwhile.
        """
        with self._lock:
            self._attempts += 1
            attempt_id = f"{self.writer}-{self._attempts}"
        attempt = Attempt(attempt_id, eval_name, number, self.worker, time.time(), epoch=epoch, alone=alone)
        self.guard()
        claim = {"attempt": attempt_id, "writer": self.writer, "worker": self.worker, "started_at": attempt.started_at}
        # Not fsynced: a claim only keeps live writers apart. After a crash of the machine, numbers
        # come from the attempt records, which are durable (a claim that vanished guards nothing).
        try:
            self.backend.create(self._claim_path(eval_name, number), json.dumps(claim).encode(), durable=False)
        except ConflictError as exc:
            msg = f"attempt {number} of eval {eval_name!r} was claimed by another writer"
            blob = self.backend.read(self._claim_path(eval_name, number))
            held = _json_object(blob.data) if blob is not None else {}
            raise AttemptTakenError(
                msg, worker=str(held.get("worker", "")), writer=str(held.get("writer", ""))
            ) from exc
        return attempt, self._events.submit(attempt, urgent=True)

    def _claim_path(self, eval_name: str, number: int) -> str:
        return f"{self.location.sidecar}/claims/{self.generation() or 'run'}/{encode_key(eval_name)}/{number}.json"

    def record(self, attempt: Attempt) -> None:
        """Store one attempt record durably (a start, an end, or a give-up on a lost attempt)."""
        self._events.submit(_trimmed(attempt), urgent=True).result()

    def record_later(self, attempt: Attempt) -> Future[None]:
        """Queue a record to go out with the next write; the future resolves once it is durable
        (acknowledge what it records only then).
        """
        return self._events.submit(_trimmed(attempt), urgent=False)

    def flush(self) -> None:
        """Wait until every queued record is written."""
        self._events.recorder.flush()

    def close(self) -> None:
        """Write what is queued, then stop the group-commit thread (the store can't record after)."""
        self._events.recorder.close()

    def wait_for_room(self, limit: int, stop: threading.Event) -> None:
        """Block while more than *limit* records are unwritten (a slow store slows the run)."""
        self._events.recorder.wait_below(limit, stop)

    def _log_path(self, eval_name: str, number: int) -> str:
        return f"{self.location.sidecar}/logs/{encode_key(eval_name)}/{number}.log"

    def save_log(self, eval_name: str, number: int, output: bytes) -> None:
        """Keep an attempt's output beside the progress file, so it outlives the pod."""
        self.guard()
        self.backend.write(self._log_path(eval_name, number), output)

    def read_log(self, eval_name: str, number: int) -> bytes | None:
        """An attempt's saved output, or None if none was saved."""
        blob = self.backend.read(self._log_path(eval_name, number))
        return None if blob is None else blob.data

    def logged_attempts(self, eval_name: str) -> list[int]:
        """The attempt numbers of *eval_name* that have saved output, in order."""
        names = self.backend.listdir(f"{self.location.sidecar}/logs/{encode_key(eval_name)}")
        return sorted(int(n.removesuffix(".log")) for n in names if n.removesuffix(".log").isdigit())

    # --- reading and compaction -----------------------------------------------------------

    def load(self) -> RunState:
        """The run's state as stored now: snapshot plus the events not yet folded into it."""
        state, names, _ = self._compactor.gather()
        self.pending_events = len(names)
        return state

    def load_folded(self) -> RunState:
        """The records folded into the snapshot so far (one conditional read; events not yet
        folded are left out: a worker's periodic look at the others needs no more).
        """
        return self._compactor.read_snapshot().state

    def _imported(self) -> RunState:
        """Before our first snapshot, a progress file here is oaievalset's: its completions of
        this run's model and extra args count.
        """
        state = RunState()
        blob = self.backend.read(self.location.path)
        if blob is not None:
            self.generation()  # reads the identity, if not yet known
            ident = self._identity
            model, extra = (None, None) if ident is None else (ident.model, ident.extra_args)
            state.merge(imported_attempts(blob.data, model, extra))
        return state

    def compact(self, tries: int | None = None) -> RunState:
        """Fold events into the snapshot, rewrite the progress file, delete the folded events
        (ConflictError after *tries* lost races, when given).
        """
        return self._compactor.compact(tries)

    @contextlib.contextmanager
    def compacting(self, every: Callable[[], float], final: Callable[[], None] | None = None) -> Iterator[None]:
        """Compact in the background every *every* seconds while events arrive; at exit call
        *final*, by default: write every queued record, then compact once more.
        """
        with self._compactor.compacting(every, final or self._final):
            yield

    def _final(self) -> None:
        self.flush()
        self.compact()

    def exists(self) -> bool:
        """Whether anything of this run (or an oaievalset progress file) is stored here."""
        return self.backend.read(self.location.path) is not None or bool(self.backend.listdir(self.location.sidecar))

    def reset(self) -> None:
        """Delete the run's progress, in an order that a kill at any point leaves consistent:
        P first (a reset killed then leaves the run whole, and the next compaction rewrites P);
        then the identity and snapshot, after which a writer or compactor that outlives the reset
        fails its conditional writes or writes under a generation no later run reads; then the
        rest; then P once more, in case a compactor that had passed its checks wrote it meanwhile.
        """
        sidecar = self.location.sidecar
        self.backend.delete([self.location.path])
        self.backend.delete([self._identity_path, f"{sidecar}/snapshot.json"])
        self.backend.delete_tree(sidecar)
        self.backend.delete([self.location.path])
        self._compactor.forget()
        self._events.clear()
        self._identity, self._identity_known = None, False
