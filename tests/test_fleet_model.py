"""A search for the fleet's safety rule, with Hypothesis, over batchrun/fleet.py and batchrun/_liveness.py.

It runs on a memory:// store with one simulated monotonic clock. The rule:

    once any worker has judged a process dead (its attempts free to take), that process passes
    no further check before a write.

Processes beat every heartbeat unless stalled (SIGSTOP: no code runs at all); they may be
stalled for any time, resumed, superseded by a new process with the same worker id, or leave.
Observers ask ``holds`` at any time. Writes happen only through ``confirm()``, as in the store.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from batchrun import _liveness as liveness_module
from batchrun import fleet as fleet_module
from batchrun._backends import open_backend
from batchrun.errors import FencedError
from batchrun.fleet import Fleet

HEARTBEAT = 1.0
TIMEOUT = 3.5
GRACE = 1.0
EXAMPLES = int(os.environ.get("BATCHRUN_MODEL_EXAMPLES", "60"))

pytestmark = pytest.mark.model


class Clock:
    """time.monotonic and time.time for fleet.py and _liveness.py, advanced by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now


@dataclass
class Process:
    fleet: Fleet
    last_beat: float
    stalled: bool = False
    fenced: bool = False
    left: bool = False
    judged_dead_at: float | None = None
    judged_by: str = ""
    writes_after_judgement: list[float] = field(default_factory=list)


class FleetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self._saved_time = fleet_module.time
        fleet_module.time = self.clock  # type: ignore[assignment]
        liveness_module.time = self.clock  # type: ignore[assignment]
        self.backend = open_backend("memory", {})
        self.folder = f"/fleet-{uuid.uuid4().hex}/workers"
        self.procs: list[Process] = []

    def teardown(self) -> None:
        fleet_module.time = self._saved_time
        liveness_module.time = self._saved_time

    def _new(self, worker: str) -> None:
        fleet = Fleet(self.backend, self.folder, worker, uuid.uuid4().hex[:12], HEARTBEAT, TIMEOUT)
        fleet.join(GRACE)
        fleet.observe(force=True)
        self.procs.append(Process(fleet, self.clock.now))

    def _running(self) -> list[Process]:
        return [p for p in self.procs if not (p.fenced or p.left or p.stalled)]

    def _try(self, proc: Process, call: str) -> bool:
        try:
            getattr(proc.fleet, call)()
        except FencedError:
            proc.fenced = True
            return False
        return True

    @rule(worker=st.sampled_from(["a", "b", "c"]))
    def start(self, worker: str) -> None:
        """A new process: a fresh worker, or one that takes an id in use over."""
        if len(self.procs) < 8:
            self._new(worker)

    @rule(seconds=st.sampled_from([0.3, 0.6, 1.0, 2.0, 5.0]))
    def advance(self, seconds: float) -> None:
        """Time passes; every running process beats on schedule (its heartbeat thread)."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + 0.25)
            for proc in self._running():
                if self.clock.now - proc.last_beat >= HEARTBEAT and self._try(proc, "beat"):
                    proc.last_beat = self.clock.now
                    proc.fleet.observe()  # the heartbeat thread lists the others too

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def stall(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self._running())).stalled = True

    @precondition(lambda self: any(p.stalled for p in self.procs))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from([p for p in self.procs if p.stalled]))
        proc.stalled = False

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        """A record, a claim or a log: allowed only after the check."""
        proc = data.draw(st.sampled_from(self._running()))
        if self._try(proc, "confirm") and proc.judged_dead_at is not None:
            proc.writes_after_judgement.append(self.clock.now)

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self._running()))
        proc.fleet.leave()
        proc.left = True

    @precondition(lambda self: len(self._running()) >= 1 and len(self.procs) >= 2)
    @rule(data=st.data())
    def judge(self, data: st.DataObject) -> None:
        """An observer decides whether a process's attempts are still held."""
        observer = data.draw(st.sampled_from(self._running()))
        target = data.draw(st.sampled_from([p for p in self.procs if p is not observer]))
        if target.left or (
            target.fleet.worker == observer.fleet.worker and target.fleet.writer == observer.fleet.writer
        ):
            return
        if not observer.fleet.holds(target.fleet.worker, target.fleet.writer) and target.judged_dead_at is None:
            target.judged_dead_at = self.clock.now
            target.judged_by = observer.fleet.writer

    @invariant()
    def nobody_writes_after_being_judged_dead(self) -> None:
        for proc in self.procs:
            assert not proc.writes_after_judgement, (
                proc.fleet.worker,
                proc.judged_dead_at,
                proc.writes_after_judgement,
            )


FleetMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_fleet_safety = FleetMachine.TestCase
