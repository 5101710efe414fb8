"""A run's identity, kept in ``P.d/run.json``: what makes two `run` invocations the same run, and
the generation its records are written under (new after every reset). The command and extra args
may change when the run has attempts, all ended, none completed, and no live worker (a command
broken for every eval, fixed): nothing done under the old one is mixed with the new one's results,
and no process is still running the old one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

from batchrun._backends import Backend
from batchrun._heartbeat import Heartbeat
from batchrun._state import Outcome, RunState
from batchrun.errors import ConflictError, RunIdentityError, StoreError

_TRIES = 20
_FIELDS = ("model", "eval_set", "command", "extra_args")  # what makes another run


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What makes two `run` invocations the same run (the eval list may grow or shrink)."""

    model: str
    eval_set: str
    command: str
    extra_args: tuple[str, ...]
    evals: tuple[str, ...]
    generation: str = field(default="", compare=False)  # set when first stored; new after a reset

    def difference(self, other: RunIdentity, fields: tuple[str, ...] = _FIELDS) -> str | None:
        """A phrase naming the first of *fields* that differs from *other* (the eval list never counts)."""
        for name in fields:
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
            generation=str(raw.get("generation", "")),
        )


def read_identity(backend: Backend, path: str, uri: str) -> RunIdentity | None:
    """The stored identity, or None if there is none yet."""
    blob = backend.read(path)
    return None if blob is None else read_identity_bytes(blob.data, uri)


def command_may_change(state: RunState, workers: Iterable[Heartbeat]) -> bool:
    """Whether a run's command may change: it has attempts, every one ended and none completed,
    and no worker is live (its heartbeat says so: a killed one's stays until --fresh or a reset).
    """
    attempts = [a for name in state.attempts for a in state.of(name)]
    ended = bool(attempts) and all(a.outcome is not None for a in attempts)
    completed = any(a.outcome is Outcome.COMPLETED for a in attempts)
    return ended and not completed and not any(w.state == "live" for w in workers)


def claim_identity(
    backend: Backend, path: str, identity: RunIdentity, uri: str, may_change: Callable[[], bool]
) -> tuple[RunIdentity, str | None]:
    """Store *identity* (a new generation) or check it against the stored one (keeping its
    generation, taking a new eval list, and a new command or extra args when *may_change* says
    so); refuse another run. Returns what is stored, and the change of command or extra args it
    took, if any.
    """
    for _ in range(_TRIES):
        blob = backend.read(path)
        changed = None
        if blob is None:
            new = replace(identity, generation=uuid.uuid4().hex[:16])
        else:
            stored = read_identity_bytes(blob.data, uri)
            difference = identity.difference(stored)
            if difference is not None and identity.difference(stored, ("model", "eval_set")) is None:
                changed = difference if may_change() else None  # nothing done, nothing running, under the old
            if difference is not None and changed is None:
                msg = (
                    f"progress at {uri} belongs to another run ({difference}); "
                    "use --fresh to start over or --progress to choose another location"
                )
                raise RunIdentityError(msg)
            new = replace(identity, generation=stored.generation)
            if stored.evals == identity.evals and changed is None:
                return new, None
        try:
            backend.replace(path, new.to_bytes(), None if blob is None else blob.tag)
        except ConflictError:
            continue
        return new, changed
    msg = f"could not record the run identity at {uri}: too many concurrent changes"
    raise StoreError(msg)


def read_identity_bytes(data: bytes, uri: str) -> RunIdentity:
    """Parse run.json, or raise StoreError naming it."""
    try:
        return RunIdentity.from_bytes(data)
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"corrupt run identity at {uri}.d/run.json: {exc}"
        raise StoreError(msg) from None


def _shown(value: object) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)
