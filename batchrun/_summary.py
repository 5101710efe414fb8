"""The summary at the end of a run: counts, wall time, and for each eval that failed how it last
ended and the command that shows its output; a `run.summary` event when logs are JSON, a few
readable lines otherwise.
"""

from __future__ import annotations

import shlex
import signal
from dataclasses import dataclass
from typing import Any

import structlog

from batchrun._console import Console
from batchrun._state import Attempt, RunState
from batchrun.errors import BatchrunError
from batchrun.location import default_uri
from batchrun.plan import RunSummary

_SHOWN = 10  # failed evals listed in the readable summary; the event lists them all


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What names the run on a command line."""

    model: str
    eval_set: str
    progress: str
    fresh: bool = False  # started with --fresh: running the same command again would start over

    def command(self, name: str, *words: str) -> str:
        """`batchrun NAME MODEL EVAL_SET WORDS`, with --progress unless the run's is the default
        (then the set's name finds it, as a name without / or #).
        """
        try:
            default = (
                "/" not in self.eval_set
                and "#" not in self.eval_set
                and self.progress == default_uri(self.model, self.eval_set)
            )
        except BatchrunError:
            default = False
        where = [] if default else ["--progress", self.progress]
        operands = [self.model, self.eval_set, *words]
        if any(word.startswith("-") for word in operands):  # would read as options: options first, then --
            return shlex.join(["batchrun", name, *where, "--", *operands])
        return shlex.join(["batchrun", name, *operands, *where])


def _ended(attempt: Attempt | None) -> str:
    if attempt is None:
        return "never ran here"
    if attempt.reason == "lost":
        return "its pod died while it ran alone"
    if attempt.reason == "timeout":
        return "timed out"
    if attempt.exit_code is not None and attempt.exit_code < 0:
        return f"killed by signal {-attempt.exit_code}"
    if attempt.exit_code is None:
        return "never finished"
    return f"exit {attempt.exit_code}"


def run_summary(  # noqa: PLR0913 - the run's counts and where to look
    info: RunInfo, state: RunState, *, total: int, done: int, failed: tuple[str, ...], duration: float
) -> dict[str, Any]:
    """The run's summary as event fields."""
    rows = []
    for name in failed:
        attempts = state.of(name)
        last = attempts[-1] if attempts else None
        rows.append(
            {
                "eval": name,
                "ended": _ended(last),
                "attempts": sum(1 for a in attempts if a.counts),
                "last_output": last.tail[-1] if last is not None and last.tail else None,
                "logs": info.command("logs", name),
            }
        )
    fields: dict[str, Any] = {
        "total": total,
        "done": done,
        "failed": len(failed),
        "pending": total - done - len(failed),
        "duration_s": round(duration, 3),
        "failed_evals": rows,
    }
    if failed or done < total:  # exit 1
        fields["hint"] = info.command("status")
    return fields


def render_summary(fields: dict[str, Any]) -> str:
    """The summary as a few lines for a terminal."""
    counts = f"{fields['total']} evals: {fields['done']} done, {fields['failed']} failed"
    lines = [f"{counts}, {fields['pending']} not done, in {fields['duration_s']:.1f} s"]
    rows = fields["failed_evals"]
    for row in rows[:_SHOWN]:
        last = f": {row['last_output']}" if row["last_output"] else ""
        lines.append(f"  failed: {row['eval']} ({row['ended']}, {row['attempts']} attempts){last}")
        lines.append(f"    {row['logs']}")
    if len(rows) > _SHOWN:
        lines.append(f"  ... and {len(rows) - _SHOWN} more failed evals")
    if "hint" in fields:
        lines.append(f"more: {fields['hint']}")
    return "\n".join(lines) + "\n"


def log_end(  # noqa: PLR0913 - what the end of a run reports, and where
    log: structlog.typing.FilteringBoundLogger,
    console: Console,
    info: RunInfo,
    state: RunState,
    summary: RunSummary,
    *,
    duration: float,
) -> None:
    """Log how the run ended (`run.interrupted`, or `run.finished` and its summary: an event when
    logs are JSON, readable lines on the console otherwise).
    """
    counts = {"total": summary.total, "done": summary.done, "failed": len(summary.failed), "ran": summary.ran}
    fields = {**counts, "duration_s": round(duration, 3), "exit_code": summary.exit_code}
    if summary.stopped_by is not None:
        log.warning("run.interrupted", signal=signal.Signals(summary.stopped_by).name, **fields)
        if not console.guard_json:  # a person stopped it: say where it stands and how to go on
            again = "the same command without --fresh" if info.fresh else "the same command"
            console.write(f"stopped: {summary.done}/{summary.total} evals done; run {again} again to resume\n")
        return
    log.info("run.finished", **fields)
    end = run_summary(info, state, total=summary.total, done=summary.done, failed=summary.failed, duration=duration)
    if console.guard_json:  # logs for a machine: one event
        log.info("run.summary", **end)
    else:
        console.write(render_summary(end))
