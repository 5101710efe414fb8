"""What `status` reports: each eval's state and attempts, as a table or one JSON object."""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchrun._state import EvalState, Outcome, RunState


@dataclass(frozen=True, slots=True)
class EvalStatus:
    """One eval's line of the report."""

    name: str
    state: EvalState
    attempts: int
    interrupted: int
    exit_code: int | None = None
    reason: str | None = None
    last_output: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The eval's entry in `status --json`; failed evals say how their last attempt ended."""
        data: dict[str, Any] = {
            "name": self.name,
            "state": self.state.value,
            "attempts": self.attempts,
            "interrupted": self.interrupted,
        }
        if self.state is EvalState.FAILED:
            data.update(exit_code=self.exit_code, reason=self.reason, last_output=list(self.last_output))
        return data


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The whole report for one run."""

    model: str
    eval_set: str
    progress: str
    evals: tuple[EvalStatus, ...]

    def count(self, state: EvalState) -> int:
        """How many evals are in *state*."""
        return sum(1 for e in self.evals if e.state is state)

    def to_json(self) -> dict[str, Any]:
        """The documented `status --json` object."""
        return {
            "model": self.model,
            "eval_set": self.eval_set,
            "progress": self.progress,
            "total": len(self.evals),
            "done": self.count(EvalState.DONE),
            "failed": self.count(EvalState.FAILED),
            "pending": self.count(EvalState.PENDING),
            "evals": [e.to_json() for e in self.evals],
        }

    def to_text(self) -> str:
        """A readable table with totals; failed evals get their exit and last output lines."""
        width = max([len("eval"), *(len(e.name) for e in self.evals)])
        lines = [
            f"{self.model} / {self.eval_set}  ({self.progress})",
            f"{'eval':<{width}}  state    attempts  interrupted",
        ]
        for e in self.evals:
            lines.append(f"{e.name:<{width}}  {e.state.value:<7}  {e.attempts:>8}  {e.interrupted:>11}")
            if e.state is EvalState.FAILED:
                lines.append(f"{'':<{width}}    last attempt: {describe_exit(e.exit_code, e.reason)}")
                lines.extend(f"{'':<{width}}    | {line}" for line in e.last_output[-5:])
        lines.append(
            f"total {len(self.evals)}: {self.count(EvalState.DONE)} done, "
            f"{self.count(EvalState.FAILED)} failed, {self.count(EvalState.PENDING)} pending"
        )
        return "\n".join(lines)


def describe_exit(exit_code: int | None, reason: str | None = None) -> str:
    """'exit 3', 'killed by SIGKILL', 'timed out' or 'never finished' for an attempt's end."""
    if reason == "lost":
        return "never finished (batchrun or its pod died during it)"
    if exit_code is None:
        return reason or "-"
    if exit_code < 0:
        try:
            text = f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            text = f"killed by signal {-exit_code}"
    else:
        text = f"exit {exit_code}"
    return f"timed out ({text})" if reason == "timeout" else text


def build_report(model: str, eval_set: str, progress: str, evals: Sequence[str], state: RunState) -> StatusReport:
    """The report for *evals* (in set order) from a loaded state."""
    rows = []
    for name in evals:
        attempts = state.of(name)
        failures = [a for a in attempts if a.outcome is Outcome.FAILED]
        last = failures[-1] if failures else None
        rows.append(
            EvalStatus(
                name=name,
                state=state.state(name),
                attempts=sum(1 for a in attempts if a.counts),
                interrupted=sum(1 for a in attempts if not a.counts),
                exit_code=None if last is None else last.exit_code,
                reason=None if last is None else last.reason,
                last_output=() if last is None else last.tail,
            )
        )
    return StatusReport(model=model, eval_set=eval_set, progress=progress, evals=tuple(rows))


def dumps(report: StatusReport) -> str:
    """`status --json` output."""
    return json.dumps(report.to_json())
