"""The progress store: where a run's completions live, safe for several writers and restarts.

Layout, for a progress URI ``P``::

    P                           completed eval names, one per line (rewritten by compaction)
    P.d/run.json                the run's identity (model, set, command, extra args, evals)
    P.d/snapshot.json           every attempt folded so far; replaced only with If-Match
    P.d/events/W-NNNNNNNNN.json one create-only object per attempt start or end,
                                W a writer's random id, N its sequence
    P.d/logs/EVAL/N.log         the output of attempt N (EVAL percent-encoded)

Recording costs one create-only PUT. Loading lists ``events/``, reads the events there, then
the snapshot, in that order: an event deleted before we read it was folded into a snapshot
written before the deletion, so the snapshot we read next has it. Records are keyed by attempt
id, so folding one twice is harmless and compactors may race; the loser of the If-Match replace
starts over.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import quote

import structlog

from batchrun._backends import Backend, open_backend
from batchrun._recorder import GroupCommit
from batchrun._state import Attempt, Outcome, RunState
from batchrun.errors import ConflictError, RunIdentityError, StoreError
from batchrun.location import ProgressLocation

_EVENT_NAME = re.compile(r"^[0-9a-f]{12}-[0-9]{9}\.json$")
_COMPACT_TRIES = 20
_TAIL_LINE_CHARS = 500

log = structlog.get_logger("batchrun.progress")


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What makes two `run` invocations the same run (the eval list may grow or shrink)."""

    model: str
    eval_set: str
    command: str
    extra_args: tuple[str, ...]
    evals: tuple[str, ...]

    def difference(self, other: RunIdentity) -> str | None:
        """A phrase naming the first field that differs from *other*, ignoring the eval list."""
        for name in ("model", "eval_set", "command", "extra_args"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"{name} was {_shown(theirs)!r}, now {_shown(mine)!r}"
        return None

    def to_bytes(self) -> bytes:
        """The run.json content."""
        data = asdict(self)
        data["version"] = 1
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RunIdentity:
        """Parse run.json."""
        raw = json.loads(data)
        return cls(
            model=str(raw["model"]),
            eval_set=str(raw["eval_set"]),
            command=str(raw["command"]),
            extra_args=tuple(map(str, raw.get("extra_args", ()))),
            evals=tuple(map(str, raw.get("evals", ()))),
        )


def encode_key(name: str) -> str:
    """An eval name as one safe key segment: percent-encoded, with no leading dot."""
    encoded = quote(name, safe="")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


def _trimmed(attempt: Attempt) -> Attempt:
    """Keep event objects small: the full output is in logs/, the record keeps short last lines."""
    if not any(len(line) > _TAIL_LINE_CHARS for line in attempt.tail):
        return attempt
    return replace(attempt, tail=tuple(line[:_TAIL_LINE_CHARS] for line in attempt.tail))


def _shown(value: object) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)


def parse_progress_lines(text: str) -> list[str]:
    """Eval names from a progress file: batchrun's plain lines or oaievalset's JSON argv lines."""
    names: list[str] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        if line.startswith("["):
            with contextlib.suppress(ValueError):
                argv = json.loads(line)
                # oaievalset writes ["oaieval", MODEL, EVAL, *extra]: the eval is the third word.
                if isinstance(argv, list) and len(argv) >= 3 and isinstance(argv[2], str):  # noqa: PLR2004
                    names.append(argv[2])
                    continue
        names.append(line)
    return names


class ProgressStore:
    """One run's progress at one location; thread-safe; see the module docstring for the layout."""

    def __init__(self, location: ProgressLocation, backend: Backend) -> None:
        """Use *backend* for *location*; :meth:`open` picks the backend from the URI."""
        self.location = location
        self.backend = backend
        self.writer = uuid.uuid4().hex[:12]
        self.worker = socket.gethostname()
        self._seq = 0  # events written
        self._attempts = 0  # attempts started
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._own: dict[str, list[Attempt]] = {}  # events we wrote and have not yet seen deleted
        self._recorder = GroupCommit(self._write_events)
        self._snapshot: tuple[str, RunState] | None = None  # last snapshot read, by tag
        self._dirty = False

    @classmethod
    def open(cls, location: ProgressLocation, storage_options: Mapping[str, Any] | None = None) -> ProgressStore:
        """Connect to the filesystem of *location* (nothing is read or written yet)."""
        return cls(location, open_backend(location.protocol, storage_options or {}))

    # --- identity -------------------------------------------------------------------------

    @property
    def _identity_path(self) -> str:
        return f"{self.location.sidecar}/run.json"

    def identity(self) -> RunIdentity | None:
        """The identity stored by the run's first `run`, or None if there is none yet."""
        blob = self.backend.read(self._identity_path)
        return None if blob is None else self._parse_identity(blob.data)

    def _parse_identity(self, data: bytes) -> RunIdentity:
        try:
            return RunIdentity.from_bytes(data)
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"corrupt run identity at {self.location.uri}.d/run.json: {exc}"
            raise StoreError(msg) from None

    def claim(self, identity: RunIdentity) -> None:
        """Make *identity* this store's run, or refuse if the store holds a different run."""
        for _ in range(_COMPACT_TRIES):
            blob = self.backend.read(self._identity_path)
            if blob is not None:
                stored = self._parse_identity(blob.data)
                difference = identity.difference(stored)
                if difference is not None:
                    msg = (
                        f"progress at {self.location.uri} belongs to another run ({difference}); "
                        "use --fresh to start over or --progress to choose another location"
                    )
                    raise RunIdentityError(msg)
                if stored.evals == identity.evals:
                    return
            try:
                self.backend.replace(self._identity_path, identity.to_bytes(), None if blob is None else blob.tag)
            except ConflictError:
                continue
            return
        msg = f"could not record the run identity at {self.location.uri}: too many concurrent changes"
        raise StoreError(msg)

    # --- recording ------------------------------------------------------------------------

    def start(self, eval_name: str, number: int, epoch: int = 0) -> Attempt:
        """Record that an attempt starts; it counts even if the pod is lost before it ends."""
        attempt, written = self.start_later(eval_name, number, epoch)
        written.result()
        return attempt

    def start_later(self, eval_name: str, number: int, epoch: int = 0) -> tuple[Attempt, Future[None]]:
        """Write an attempt's start now, without waiting: the caller may launch the process meanwhile."""
        with self._lock:
            self._attempts += 1
            attempt_id = f"{self.writer}-{self._attempts}"
        attempt = Attempt(attempt_id, eval_name, number, self.worker, time.time(), epoch=epoch)
        return attempt, self._recorder.submit(attempt, urgent=True)

    def record(self, attempt: Attempt) -> None:
        """Store one attempt record durably (a start, an end, or a give-up on a lost attempt)."""
        self._recorder.submit(_trimmed(attempt), urgent=True).result()

    def record_later(self, attempt: Attempt) -> Future[None]:
        """Queue a record to go out with the next write; the future resolves once it is durable
        (acknowledge what it records only then).
        """
        return self._recorder.submit(_trimmed(attempt), urgent=False)

    def flush(self) -> None:
        """Wait until every queued record is written."""
        self._recorder.flush()

    def _log_path(self, eval_name: str, number: int) -> str:
        return f"{self.location.sidecar}/logs/{encode_key(eval_name)}/{number}.log"

    def save_log(self, eval_name: str, number: int, output: bytes) -> None:
        """Keep an attempt's output beside the progress file, so it outlives the pod."""
        self.backend.write(self._log_path(eval_name, number), output)

    def read_log(self, eval_name: str, number: int) -> bytes | None:
        """An attempt's saved output, or None if none was saved."""
        blob = self.backend.read(self._log_path(eval_name, number))
        return None if blob is None else blob.data

    def logged_attempts(self, eval_name: str) -> list[int]:
        """The attempt numbers of *eval_name* that have saved output, in order."""
        names = self.backend.listdir(f"{self.location.sidecar}/logs/{encode_key(eval_name)}")
        return sorted(int(n.removesuffix(".log")) for n in names if n.removesuffix(".log").isdigit())

    def _write_events(self, attempts: Sequence[Attempt]) -> None:
        """One create-only event object holding a batch of records, one JSON object per line."""
        with self._lock:
            self._seq += 1
            name = f"{self.writer}-{self._seq:09d}.json"
        data = "\n".join(json.dumps(a.to_json(), separators=(",", ":")) for a in attempts).encode()
        self.backend.create(f"{self.location.events}/{name}", data, durable=True)
        with self._lock:
            self._own[name] = list(attempts)
            self._dirty = True

    # --- reading and compaction -----------------------------------------------------------

    def load(self) -> RunState:
        """The run's state as stored now: snapshot plus the events not yet folded into it."""
        state, _, _ = self._gather()
        return state

    def _gather(self) -> tuple[RunState, list[str], str | None]:
        names = [n for n in self.backend.listdir(self.location.events) if _EVENT_NAME.match(n)]
        events = self._read_events(names)
        tag, base = self._read_snapshot()
        state = base.copy()
        state.merge(events)
        return state, names, tag

    def _read_events(self, names: list[str]) -> list[Attempt]:
        with self._lock:
            own = {name: self._own[name] for name in names if name in self._own}
        events = [attempt for batch in own.values() for attempt in batch]
        for name in names:
            if name in own:
                continue
            blob = self.backend.read(f"{self.location.events}/{name}")
            if blob is None:
                continue  # folded and deleted by a compactor since we listed it
            try:
                events.extend(Attempt.from_json(json.loads(line)) for line in blob.data.splitlines() if line)
            except (ValueError, KeyError, TypeError):
                log.warning("progress.event_unreadable", event=name, progress=self.location.uri)
        return events

    def _read_snapshot(self) -> tuple[str | None, RunState]:
        path = f"{self.location.sidecar}/snapshot.json"
        cached = self._snapshot
        if cached is not None and self.backend.tag(path) == cached[0]:
            return cached
        blob = self.backend.read(path)
        if blob is None:
            return None, self._imported()
        try:
            raw = json.loads(blob.data)
            state = RunState()
            state.merge(Attempt.from_json(item) for item in raw["attempts"])
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"corrupt progress snapshot at {self.location.uri}.d/snapshot.json: {exc}"
            raise StoreError(msg) from None
        self._snapshot = (blob.tag, state)
        return blob.tag, state

    def _imported(self) -> RunState:
        """Before our first snapshot, a progress file here is another tool's (oaievalset's)."""
        state = RunState()
        blob = self.backend.read(self.location.path)
        if blob is not None:
            names = parse_progress_lines(blob.data.decode("utf-8", errors="replace"))
            state.merge(
                Attempt(
                    f"import-{i}", name, 0, "imported", 0.0, outcome=Outcome.COMPLETED, ended_at=float(i), exit_code=0
                )
                for i, name in enumerate(names)
            )
        return state

    def compact(self) -> RunState:
        """Fold events into the snapshot, rewrite the progress file, delete the folded events."""
        with self._compact_lock:
            for _ in range(_COMPACT_TRIES):
                with self._lock:
                    self._dirty = False
                state, names, tag = self._gather()
                if tag is not None and not names:
                    return state
                snapshot = {"version": 1, "attempts": [a.to_json() for a in state.all_attempts()]}
                data = json.dumps(snapshot, separators=(",", ":")).encode()
                try:
                    new_tag = self.backend.replace(f"{self.location.sidecar}/snapshot.json", data, tag)
                except ConflictError:
                    time.sleep(random.uniform(0.01, 0.1))  # noqa: S311 - jitter, not crypto
                    continue
                self._snapshot = (new_tag, state)
                lines = "".join(f"{name}\n" for name in state.completed_order())
                self.backend.write(self.location.path, lines.encode())
                self.backend.delete([f"{self.location.events}/{name}" for name in names])
                with self._lock:
                    for name in names:
                        self._own.pop(name, None)
                return state
        msg = f"could not compact progress at {self.location.uri}: too many concurrent compactions"
        raise StoreError(msg)

    @contextlib.contextmanager
    def compacting(self, every: float) -> Iterator[None]:
        """Compact in the background every *every* seconds while events arrive, and once at exit."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                if self._dirty:
                    try:
                        self.compact()
                    except StoreError as exc:
                        log.warning("progress.compaction_failed", error=str(exc), progress=self.location.uri)

        thread = threading.Thread(target=loop, name="batchrun-compactor", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.flush()
            self.compact()

    def exists(self) -> bool:
        """Whether anything of this run (or an oaievalset progress file) is stored here."""
        return self.backend.read(self.location.path) is not None or bool(self.backend.listdir(self.location.sidecar))

    def reset(self) -> None:
        """Delete the run's progress; the progress file goes first, so a half-done reset never
        leaves a bare progress file that the next run would import.
        """
        self.backend.delete([self.location.path])
        self.backend.delete_tree(self.location.sidecar)
        self._snapshot = None
        with self._lock:
            self._own.clear()
