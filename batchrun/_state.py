"""What the progress store knows, as plain values: attempts, and the state of each eval derived
from them. Every record is keyed by a unique attempt id and records of one attempt merge by a
fixed precedence, so folding records twice or in any order gives the same state; that is what
lets loaders and compactors race safely.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How an attempt ended; an attempt with no outcome is running or was lost with its pod."""

    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped by a signal to batchrun; does not count as an attempt


# Two records of one attempt: the stronger outcome wins, then the final one.
_RANK = {None: 0, Outcome.INTERRUPTED: 1, Outcome.FAILED: 2, Outcome.COMPLETED: 3}


class EvalState(StrEnum):
    """An eval's state as `status` shows it."""

    DONE = "done"
    FAILED = "failed"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of one eval's command.

    ``epoch`` counts `--retry-failed` rounds: only the newest epoch's attempts count toward
    `--max-attempts`. ``final`` marks the failure after which no attempt is left. ``alone`` says
    the attempt ran with no other eval of its process beside it, so a death of its pod during it
    is evidence against it (see :meth:`RunState.lost`).
    """

    id: str
    eval: str
    number: int
    worker: str
    started_at: float
    epoch: int = 0
    outcome: Outcome | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    final: bool = False
    reason: str | None = None
    tail: tuple[str, ...] = ()
    alone: bool = False

    def finished(  # noqa: PLR0913 - every field of an attempt's end
        self,
        outcome: Outcome,
        *,
        exit_code: int | None,
        final: bool = False,
        reason: str | None = None,
        tail: tuple[str, ...] = (),
        ended_at: float | None = None,
    ) -> Attempt:
        """A copy of the attempt with its end recorded (at *ended_at*, by default now)."""
        ended_at = time.time() if ended_at is None else ended_at
        return replace(
            self, outcome=outcome, ended_at=ended_at, exit_code=exit_code, final=final, reason=reason, tail=tail
        )

    @property
    def writer(self) -> str:
        """The process that wrote this attempt (attempt ids are ``WRITER-K``)."""
        return self.id.rsplit("-", 1)[0]

    @property
    def counts(self) -> bool:
        """Whether `status` counts this as an attempt (interrupted ones are shown apart)."""
        return self.outcome is not Outcome.INTERRUPTED

    def to_json(self) -> dict[str, Any]:
        """A compact JSON object: fields that are unset are left out (written by hand: this runs
        for every attempt at every compaction, and dataclasses.asdict is slow).
        """
        data: dict[str, Any] = {
            "id": self.id,
            "eval": self.eval,
            "number": self.number,
            "worker": self.worker,
            "started_at": self.started_at,
        }
        optional = {
            "epoch": self.epoch or None,
            "outcome": None if self.outcome is None else self.outcome.value,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
            "final": self.final or None,
            "reason": self.reason,
            "tail": list(self.tail) or None,
            "alone": self.alone or None,
        }
        data.update((key, value) for key, value in optional.items() if value is not None)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        """Parse what :meth:`to_json` wrote; raises KeyError/ValueError/TypeError if malformed."""
        outcome = data.get("outcome")
        return cls(
            id=str(data["id"]),
            eval=str(data["eval"]),
            number=int(data["number"]),
            worker=str(data.get("worker", "")),
            started_at=float(data["started_at"]),
            epoch=int(data.get("epoch", 0)),
            outcome=None if outcome is None else Outcome(outcome),
            ended_at=None if data.get("ended_at") is None else float(data["ended_at"]),
            exit_code=None if data.get("exit_code") is None else int(data["exit_code"]),
            final=bool(data.get("final", False)),
            reason=None if data.get("reason") is None else str(data["reason"]),
            tail=tuple(str(line) for line in data.get("tail", ())),
            alone=bool(data.get("alone", False)),
        )


def _precedence(attempt: Attempt) -> tuple[int, bool]:
    return _RANK[attempt.outcome], attempt.final


@dataclass(slots=True)
class RunState:
    """All attempts of a run, by eval; merging is idempotent and order-free."""

    attempts: dict[str, dict[str, Attempt]] = field(default_factory=dict)

    def add(self, attempt: Attempt) -> None:
        """Fold one record in; of two records of one attempt the stronger one wins."""
        by_id = self.attempts.setdefault(attempt.eval, {})
        known = by_id.get(attempt.id)
        if known is None or _precedence(attempt) > _precedence(known):
            by_id[attempt.id] = attempt

    def merge(self, attempts: Iterable[Attempt]) -> None:
        """Fold many records in."""
        for attempt in attempts:
            self.add(attempt)

    def copy(self) -> RunState:
        """A copy that can be merged into without touching this one."""
        return RunState({name: dict(by_id) for name, by_id in self.attempts.items()})

    def of(self, eval_name: str) -> list[Attempt]:
        """The attempts of *eval_name*, oldest first."""
        return sorted(self.attempts.get(eval_name, {}).values(), key=lambda a: (a.number, a.started_at, a.id))

    def epoch(self, eval_name: str) -> int:
        """The newest --retry-failed round of *eval_name* (0 before any)."""
        return max((a.epoch for a in self.attempts.get(eval_name, {}).values()), default=0)

    def state(self, eval_name: str, epoch: int | None = None) -> EvalState:
        """Done once any attempt completed; failed once round *epoch* (by default the newest) gave
        up; else pending.
        """
        by_id = self.attempts.get(eval_name, {})
        if any(a.outcome is Outcome.COMPLETED for a in by_id.values()):
            return EvalState.DONE
        epoch = self.epoch(eval_name) if epoch is None else epoch
        if any(a.final and a.epoch == epoch for a in by_id.values()):
            return EvalState.FAILED
        return EvalState.PENDING

    def next_number(self, eval_name: str) -> int:
        """The number the next attempt of *eval_name* gets, counting from 1."""
        return max((a.number for a in self.attempts.get(eval_name, {}).values()), default=0) + 1

    def completed_order(self) -> list[str]:
        """Completed evals in the order they completed (the progress file's lines)."""
        first_done: list[tuple[float, str]] = []
        for name, by_id in self.attempts.items():
            ends = [a.ended_at or 0.0 for a in by_id.values() if a.outcome is Outcome.COMPLETED]
            if ends:
                first_done.append((min(ends), name))
        return [name for _, name in sorted(first_done)]

    def all_attempts(self) -> list[Attempt]:
        """Every record, in a stable order (for snapshots)."""
        return [a for name in sorted(self.attempts) for a in self.of(name)]
