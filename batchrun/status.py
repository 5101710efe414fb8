"""What `status` reports: each eval's state and attempts, as a table or one JSON object."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchrun._state import EvalState, RunState


@dataclass(frozen=True, slots=True)
class EvalStatus:
    """One eval's line of the report."""

    name: str
    state: EvalState
    attempts: int
    exit_code: int | None
    last_output: tuple[str, ...]


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
            "evals": [
                {"name": e.name, "state": e.state.value, "attempts": e.attempts}
                | (
                    {"exit_code": e.exit_code, "last_output": list(e.last_output)}
                    if e.state is EvalState.FAILED
                    else {}
                )
                for e in self.evals
            ],
        }

    def to_text(self) -> str:
        """A readable table with totals."""
        width = max([len("eval"), *(len(e.name) for e in self.evals)])
        lines = [f"{self.model} / {self.eval_set}  ({self.progress})", f"{'eval':<{width}}  state    attempts"]
        for e in self.evals:
            lines.append(f"{e.name:<{width}}  {e.state.value:<7}  {e.attempts:>8}")
            if e.state is EvalState.FAILED:
                lines.append(f"{'':<{width}}    last exit code {e.exit_code}")
                lines.extend(f"{'':<{width}}    | {line}" for line in e.last_output[-5:])
        lines.append(
            f"total {len(self.evals)}: {self.count(EvalState.DONE)} done, "
            f"{self.count(EvalState.FAILED)} failed, {self.count(EvalState.PENDING)} pending"
        )
        return "\n".join(lines)


def build_report(model: str, eval_set: str, progress: str, evals: Sequence[str], state: RunState) -> StatusReport:
    """The report for *evals* (in set order) from a loaded state."""
    rows = []
    for name in evals:
        attempts = state.of(name)
        finished = [a for a in attempts if a.outcome is not None]
        last = finished[-1] if finished else None
        rows.append(
            EvalStatus(
                name=name,
                state=state.state(name),
                attempts=len(attempts),
                exit_code=None if last is None else last.exit_code,
                last_output=() if last is None else last.tail,
            )
        )
    return StatusReport(model=model, eval_set=eval_set, progress=progress, evals=tuple(rows))


def dumps(report: StatusReport) -> str:
    """`status --json` output."""
    return json.dumps(report.to_json())
