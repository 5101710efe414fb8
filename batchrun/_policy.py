"""What an eval's attempts so far say about its next one: run it (alone or beside others), or give
up. Pure rules over attempt records, plus the gate that makes "alone" true in one process.

The rule for pods that die (README, "When a pod dies"): an attempt with no outcome that no live
process of ours runs was lost with its pod (an OOM kill of the container, a spot reclaim without
notice, a lost node). A lost attempt says nothing about its eval when others ran beside it, so
it is not counted as a failure; the eval's next attempt runs *alone*, with no other eval of this
process beside it, until it finishes once. Only deaths while running alone are evidence against
the eval: after ``--max-lost`` of those it is recorded failed. Failures (a non-zero exit, a
timeout) count toward ``--max-attempts`` as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace

from batchrun._state import Attempt, Outcome


@dataclass(frozen=True, slots=True)
class NextStep:
    """The decision for an eval: give up (with the record that says why), or run, maybe alone."""

    give_up: Attempt | None = None
    alone: bool = False
    failures: int = 0
    lost_alone: int = 0


LOST_NOTE = "attempt never finished: batchrun or its pod died during it (killed, OOM, node lost)"


def lost(attempts: Sequence[Attempt], running: Collection[str]) -> list[Attempt]:
    """Attempts with no outcome that no live process of ours runs."""
    return [a for a in attempts if a.outcome is None and a.id not in running]


def next_step(attempts: Sequence[Attempt], *, max_attempts: int, max_lost: int, running: Collection[str]) -> NextStep:
    """Decide from *attempts* (one round of one eval, oldest first) what comes next."""
    failures = [a for a in attempts if a.outcome is Outcome.FAILED]
    gone = lost(attempts, running)
    gone_alone = [a for a in gone if a.alone]
    if len(failures) >= max_attempts:
        return NextStep(give_up=replace(failures[-1], final=True), failures=len(failures), lost_alone=len(gone_alone))
    if len(gone_alone) >= max_lost:
        latest = gone_alone[-1]
        note = f"{LOST_NOTE}; its pod died {len(gone_alone)} times while it ran alone"
        record = latest.finished(Outcome.FAILED, exit_code=None, final=True, reason="lost", tail=(note,))
        return NextStep(give_up=record, failures=len(failures), lost_alone=len(gone_alone))
    # Alone until it finishes once: the newest attempt that ended or died decides.
    settled = [a for a in attempts if a.outcome is not Outcome.INTERRUPTED and a.id not in running]
    alone = bool(settled) and settled[-1].outcome is None
    return NextStep(alone=alone, failures=len(failures), lost_alone=len(gone_alone))


class AloneGate:
    """Attempts enter shared or alone: an alone one waits for the others to leave and keeps new
    ones out until it leaves; a waiting alone one also holds back new shared ones (no starvation).
    """

    def __init__(self) -> None:
        """An open gate."""
        self._cond = threading.Condition()
        self._shared = 0
        self._alone = False
        self._waiting_alone = 0

    @contextlib.contextmanager
    def entered(self, *, alone: bool, stop: threading.Event) -> Iterator[bool]:
        """Hold the gate while the block runs; yields False (without holding it) once *stop* is set."""
        if not self._enter(alone=alone, stop=stop):
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                if alone:
                    self._alone = False
                else:
                    self._shared -= 1
                self._cond.notify_all()

    def _enter(self, *, alone: bool, stop: threading.Event) -> bool:
        with self._cond:
            if alone:
                self._waiting_alone += 1
            try:
                while not stop.is_set():
                    free = not self._alone and (self._shared == 0 if alone else self._waiting_alone == 0)
                    if free:
                        if alone:
                            self._alone = True
                        else:
                            self._shared += 1
                        return True
                    self._cond.wait(0.1)
                return False
            finally:
                if alone:
                    self._waiting_alone -= 1

    def wake(self) -> None:
        """Let waiters look at their stop event now."""
        with self._cond:
            self._cond.notify_all()
