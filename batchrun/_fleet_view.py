"""The workers of a run as `status` shows them: one row per stored heartbeat, judged for display.

A heartbeat's ``at`` is the wall time of its last write, on the worker's clock; its age here is
read on the clock of the machine running `status`. That is good enough to show (NTP keeps clocks
within a second or so) and is never used to decide anything: workers judge each other on their
own monotonic clocks (fleet.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from batchrun.fleet import HEARTBEAT_S, Heartbeat

_STALLED_BEATS = 3  # a live worker is shown stalled once it missed about this many heartbeats
_STALLED_SLACK_S = 2.0  # ... plus this, for the read itself and for two machines' clocks
_RUNNING_WIDTH = 60  # characters of running eval names in the text table


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker's row: ``state`` is ``live``, ``stalled`` (live, but its heartbeat stopped
    changing) or ``dead`` (declared dead by another worker, or its process is gone from this host).
    """

    id: str
    writer: str
    host: str
    state: str
    last_seen_s: float
    running: tuple[str, ...]
    completed: int
    note: str = ""

    @property
    def holds_evals(self) -> bool:
        """Whether this worker's open attempts may still be running (it was not found dead)."""
        return self.state != "dead"

    def to_json(self) -> dict[str, Any]:
        """The worker's entry in `status --json`."""
        data: dict[str, Any] = {
            "id": self.id,
            "host": self.host,
            "state": self.state,
            "last_seen_s": self.last_seen_s,
            "running": list(self.running),
            "completed": self.completed,
        }
        if self.note:
            data["note"] = self.note
        return data


def stalled_after(beat: Heartbeat) -> float:
    """Seconds without a write after which a live heartbeat is shown stalled: its own interval
    (the mean gap between its writes so far; the default before its second write) times three,
    plus some slack.
    """
    interval = (beat.at - beat.started_at) / beat.beat if beat.beat > 0 and beat.at > beat.started_at else HEARTBEAT_S
    return _STALLED_BEATS * interval + _STALLED_SLACK_S


def view_workers(beats: Iterable[Heartbeat], now: float) -> tuple[WorkerView, ...]:
    """The rows for *beats* at wall time *now*; workers that left are not shown."""
    rows = []
    for beat in beats:
        if beat.state not in ("live", "dead"):
            continue
        age = round(max(0.0, now - beat.at), 1)
        state, note = beat.state, beat.note
        if state == "live" and beat.process_gone():
            state, note = "dead", f"process {beat.pid} is gone from this host"
        elif state == "live" and age > stalled_after(beat):
            state = "stalled"
        elif state == "dead":
            note = f"declared dead {format_age(age)} ago {note}".rstrip()
        running = () if state == "dead" else beat.running
        rows.append(WorkerView(beat.worker, beat.writer, beat.host, state, age, running, beat.completed, note))
    return tuple(rows)


def format_age(seconds: float) -> str:
    """'0.4 s', '12 s', '5 min', '2.5 h'."""
    if seconds < 10:  # noqa: PLR2004 - tenths only while they matter
        return f"{seconds:.1f} s"
    if seconds < 120:  # noqa: PLR2004
        return f"{seconds:.0f} s"
    if seconds < 7200:  # noqa: PLR2004
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def shorten(names: Sequence[str], width: int = _RUNNING_WIDTH) -> str:
    """As many of *names* as fit in about *width* characters, then '+N more'; '-' for none."""
    if not names:
        return "-"
    shown: list[str] = []
    for i, name in enumerate(names):
        more = len(names) - i
        if shown and len(", ".join([*shown, name])) > width:
            return f"{', '.join(shown)}, +{more} more"
        shown.append(name)
    return ", ".join(shown)


def workers_table(rows: Sequence[WorkerView]) -> list[str]:
    """The text section listing *rows* (nothing when there are none)."""
    if not rows:
        return []
    counts = {state: sum(1 for r in rows if r.state == state) for state in ("live", "stalled", "dead")}
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    wid = max(len("worker"), *(len(r.id) for r in rows))
    host = max(len("host"), *(len(r.host) for r in rows))
    lines = ["", f"workers: {summary}", f"{'worker':<{wid}}  {'host':<{host}}  state     last seen  completed  running"]
    for r in rows:
        last = f"{format_age(r.last_seen_s)} ago"
        tail = f"({r.note})" if r.state == "dead" else shorten(r.running)
        lines.append(f"{r.id:<{wid}}  {r.host:<{host}}  {r.state:<7}  {last:>10}  {r.completed:>9}  {tail}")
    return lines
