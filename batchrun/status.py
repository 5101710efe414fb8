"""What `status` reports: each eval's state and attempts, and the workers of the run, as a table
or one JSON object; `--watch` redraws it.

An eval is shown ``running`` (a state of this report only, not of the store) while the newest
attempt of its current round has no outcome and was written by the process that holds a live
heartbeat of its worker; an open attempt whose worker is gone, dead or now another process stays
``pending``, noted as lost with that worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TextIO

from batchrun._fleet_view import WorkerView, format_age, view_workers, workers_table
from batchrun._state import Attempt, EvalState, Outcome, RunState
from batchrun.fleet import Heartbeat

RUNNING = "running"
CLEAR_SCREEN = "\x1b[H\x1b[2J"


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
    worker: str | None = None  # set while the eval runs: the worker running it
    last_seen_s: float | None = None  # ... and the age of that worker's heartbeat
    lost_with: str | None = None  # a pending eval's last attempt never ended: the worker it ran on

    @property
    def shown(self) -> str:
        """The state as shown: ``running`` for a pending eval being run, else its stored state."""
        return RUNNING if self.worker is not None else self.state.value

    def to_json(self) -> dict[str, Any]:
        """The eval's entry in `status --json`; failed evals say how their last attempt ended,
        running ones on which worker.
        """
        data: dict[str, Any] = {
            "name": self.name,
            "state": self.shown,
            "attempts": self.attempts,
            "interrupted": self.interrupted,
        }
        if self.state is EvalState.FAILED:
            data.update(exit_code=self.exit_code, reason=self.reason, last_output=list(self.last_output))
        if self.worker is not None:
            data.update(worker=self.worker, last_seen_s=self.last_seen_s)
        if self.lost_with is not None:
            data.update(lost_with=self.lost_with)
        return data

    def remark(self) -> str:
        """What the table says after the counts: where a running eval runs, or where it was lost."""
        if self.worker is not None and self.last_seen_s is not None:
            return f"  on {self.worker}, last seen {format_age(self.last_seen_s)} ago"
        if self.lost_with is not None:
            return f"  last attempt lost with worker {self.lost_with}"
        return ""


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The whole report for one run."""

    model: str
    eval_set: str
    progress: str
    evals: tuple[EvalStatus, ...]
    workers: tuple[WorkerView, ...] = ()

    def count(self, state: str) -> int:
        """How many evals are shown in *state* (an EvalState, or ``running``)."""
        return sum(1 for e in self.evals if e.shown == state)

    def to_json(self) -> dict[str, Any]:
        """The documented `status --json` object."""
        return {
            "model": self.model,
            "eval_set": self.eval_set,
            "progress": self.progress,
            "total": len(self.evals),
            "done": self.count(EvalState.DONE),
            "failed": self.count(EvalState.FAILED),
            "running": self.count(RUNNING),
            "pending": self.count(EvalState.PENDING),
            "evals": [e.to_json() for e in self.evals],
            "workers": [w.to_json() for w in self.workers],
        }

    def to_text(self) -> str:
        """A readable table with totals; failed evals get their exit and last output lines."""
        width = max([len("eval"), *(len(e.name) for e in self.evals)])
        lines = [
            f"{self.model} / {self.eval_set}  ({self.progress})",
            f"{'eval':<{width}}  state    attempts  interrupted",
        ]
        for e in self.evals:
            lines.append(f"{e.name:<{width}}  {e.shown:<7}  {e.attempts:>8}  {e.interrupted:>11}{e.remark()}")
            if e.state is EvalState.FAILED:
                lines.append(f"{'':<{width}}    last attempt: {describe_exit(e.exit_code, e.reason)}")
                lines.extend(f"{'':<{width}}    | {line}" for line in e.last_output[-5:])
        running = self.count(RUNNING)
        lines.append(
            f"total {len(self.evals)}: {self.count(EvalState.DONE)} done, {self.count(EvalState.FAILED)} failed, "
            + (f"{running} running, " if running else "")
            + f"{self.count(EvalState.PENDING)} pending"
        )
        lines.extend(workers_table(self.workers))
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


def build_report(  # noqa: PLR0913 - the report's parts
    model: str,
    eval_set: str,
    progress: str,
    evals: Sequence[str],
    state: RunState,
    *,
    workers: Sequence[Heartbeat] = (),
    now: float | None = None,
) -> StatusReport:
    """The report for *evals* (in set order) from a loaded state and the stored heartbeats, their
    ages taken at wall time *now* (by default the current time).
    """
    views = view_workers(workers, time.time() if now is None else now)
    holders = {(w.id, w.writer): w for w in views if w.holds_evals}
    rows = []
    for name in evals:
        attempts = state.of(name)
        failures = [a for a in attempts if a.outcome is Outcome.FAILED]
        last = failures[-1] if failures else None
        row = EvalStatus(
            name=name,
            state=state.state(name),
            attempts=sum(1 for a in attempts if a.counts),
            interrupted=sum(1 for a in attempts if not a.counts),
            exit_code=None if last is None else last.exit_code,
            reason=None if last is None else last.reason,
            last_output=() if last is None else last.tail,
        )
        rows.append(_with_worker(row, _open_attempt(state, name), holders))
    return StatusReport(
        model=model, eval_set=eval_set, progress=progress, evals=tuple(rows), workers=_from_records(views, rows, state)
    )


def _from_records(views: Sequence[WorkerView], rows: Sequence[EvalStatus], state: RunState) -> tuple[WorkerView, ...]:
    """Each worker's running evals and completions as the records say, which are newer than its
    last heartbeat (up to --heartbeat seconds old): the workers table agrees with the evals'.
    """
    running: dict[str, list[str]] = {}
    for row in rows:
        if row.worker is not None:
            running.setdefault(row.worker, []).append(row.name)
    done = Counter(
        (a.worker, a.writer) for name in state.attempts for a in state.of(name) if a.outcome is Outcome.COMPLETED
    )
    return tuple(
        replace(w, running=tuple(running.get(w.id, ())), completed=max(w.completed, done[w.id, w.writer]))
        if w.holds_evals
        else w
        for w in views
    )


def _open_attempt(state: RunState, name: str) -> Attempt | None:
    """The newest attempt of *name*'s current round, if it has no outcome and the eval is pending."""
    if state.state(name) is not EvalState.PENDING:
        return None
    epoch = state.epoch(name)
    current = [a for a in state.of(name) if a.epoch == epoch]
    return current[-1] if current and current[-1].outcome is None else None


def _with_worker(row: EvalStatus, attempt: Attempt | None, holders: dict[tuple[str, str], WorkerView]) -> EvalStatus:
    if attempt is None:
        return row
    holder = holders.get((attempt.worker, attempt.writer))
    if holder is not None:
        return replace(row, worker=holder.id, last_seen_s=holder.last_seen_s)
    return replace(row, lost_with=attempt.worker) if attempt.worker else row


def dumps(report: StatusReport) -> str:
    """`status --json` output."""
    return json.dumps(report.to_json())


class Frames(StrEnum):
    """How `status --watch` separates its frames."""

    SCREEN = "screen"  # a terminal: clear it before each frame
    BLOCKS = "blocks"  # tables to a file or pipe: an empty line between frames
    LINES = "lines"  # JSON: one object per line, nothing between


def watch(
    frame: Callable[[], str],
    *,
    interval: float,
    style: Frames,
    out: TextIO | None = None,
    frames: int | None = None,
) -> None:
    """Print *frame()* every *interval* seconds in *style* until Ctrl-C (or *frames* times).
    Ctrl-C ends it quietly (with a newline unless it prints JSON lines); so does a reader that
    went away (`| head`).
    """
    out = sys.stdout if out is None else out
    shown = 0
    try:
        while frames is None or shown < frames:
            text = frame()
            lead = {Frames.SCREEN: CLEAR_SCREEN, Frames.BLOCKS: "\n" if shown else ""}.get(style, "")
            out.write(f"{lead}{text}\n")
            out.flush()
            shown += 1
            if frames is None or shown < frames:
                time.sleep(interval)
    except KeyboardInterrupt:
        if style is not Frames.LINES:
            with contextlib.suppress(OSError):
                out.write("\n")
                out.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # no error at exit when Python flushes stdout again
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
