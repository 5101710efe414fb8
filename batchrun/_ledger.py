"""A run's ledger: the records this process knows (what the store held at start, what it recorded
since, what other writers recorded meanwhile), its counts of done and failed evals, and the
acknowledgement of completions once they are durable.

Other writers: an attempt that was open when the run started was lost with its pod; one that
opens later belongs to a live writer (two runs started on one store), whose outcome is waited
for before the eval's next attempt is decided, so together they never exceed --max-attempts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future

from batchrun._signals import StopRequest
from batchrun._state import Attempt, EvalState, Outcome, RunState
from batchrun.progress import ProgressStore

COMPACT_AT_START = 50  # unfolded events at start-up beyond which the run compacts first
POLL_OTHER_S = 2.0  # how often to look at an attempt another writer runs
ORPHAN_CLAIM_S = 10.0  # a claim whose attempt record never appears was left by a dead writer


class Ledger:
    """What one run knows of its records, and what it counts; thread-safe."""

    def __init__(self, store: ProgressStore, stop: StopRequest, stop_signal: int) -> None:
        """Keep the records of *store*; a record it fails to take requests a stop with *stop_signal*."""
        self.store = store
        self.stop = stop
        self._stop_signal = stop_signal
        self.lock = threading.Lock()
        self.state = RunState()
        self._open_at_start: set[str] = set()
        self._presumed_lost: set[str] = set()  # other writers' attempts waited for in vain
        self._taken: dict[str, int] = {}  # per eval, the highest attempt number another writer claimed
        self.done = 0
        self.failed: list[str] = []
        self.ran = 0
        self._acks = threading.Condition()
        self._unacknowledged = 0
        self.errors: list[BaseException] = []

    def load(self) -> None:
        """Read the store (compacting first after many kills left many events)."""
        self.state = self.store.load()
        if self.store.pending_events > COMPACT_AT_START:
            self.state = self.store.compact()
        self._open_at_start = {a.id for a in self.state.all_attempts() if a.outcome is None}

    def refresh(self) -> None:
        """Fold the store's current records into the ledger."""
        state = self.store.load()
        with self.lock:
            self.state.merge(a for by_id in state.attempts.values() for a in by_id.values())

    def attempts(self, name: str, epoch: int) -> list[Attempt]:
        """The attempts of round *epoch* of *name*, oldest first."""
        with self.lock:
            return [a for a in self.state.of(name) if a.epoch == epoch]

    def elsewhere(self, attempts: list[Attempt], mine: Collection[str]) -> list[Attempt]:
        """Open attempts that another live writer started after this run began."""
        gone = self._open_at_start | self._presumed_lost
        return [a for a in attempts if a.outcome is None and a.id not in mine and a.id not in gone]

    def next_number(self, name: str) -> int:
        """The number to claim for the next attempt of *name*."""
        with self.lock:
            return max(self.state.next_number(name), self._taken.get(name, 0) + 1)

    def settled_elsewhere(self, name: str, epoch: int) -> bool:
        """Whether another writer completed the eval, or gave up this round of it, meanwhile."""
        with self.lock:
            attempts = self.state.of(name)
            if any(a.outcome is Outcome.COMPLETED for a in attempts):
                self.done += 1
            elif any(a.final and a.epoch == epoch for a in attempts):
                self.failed.append(name)
            else:
                return False
        return True

    def wait_for_other_writer(self, name: str, number: int, bound: float) -> bool:
        """Another process has attempt *number*: wait until its record says it ended (or the eval
        is done, or the claim turns out to have no attempt behind it). False if it was still open
        after *bound* seconds: its writer is presumed dead, and the attempt counts as lost.
        """
        with self.lock:
            self._taken[name] = max(self._taken.get(name, 0), number)
        first_seen = time.monotonic()
        while not self.stop.requested.wait(POLL_OTHER_S):
            self.refresh()
            with self.lock:
                state = self.state.state(name)
                theirs = [a for a in self.state.of(name) if a.number == number]
            if state is EvalState.DONE or any(a.outcome is not None for a in theirs):
                return True
            waited = time.monotonic() - first_seen
            if not theirs and waited > ORPHAN_CLAIM_S:
                return True  # the claim's writer died before recording the attempt: it never ran
            if waited > bound:
                with self.lock:
                    self._presumed_lost.update(a.id for a in theirs)
                return False
        return True

    # --- records --------------------------------------------------------------------------

    def remember(self, attempt: Attempt) -> None:
        """Count a record this process wrote (or is writing)."""
        with self.lock:
            self.state.add(attempt)

    def record(self, attempt: Attempt) -> None:
        """Store a record durably, then count it."""
        self.store.record(attempt)
        self.remember(attempt)

    def record_soon(self, attempt: Attempt) -> None:
        """Queue a record nobody waits for (an interrupted attempt's end, during a stop): the final
        write takes it along, within its time bound; if the store fails, the attempt just looks lost.
        """
        self.store.record_later(attempt)
        self.remember(attempt)

    def record_completion(self, ended: Attempt, acknowledged: Callable[[int], None]) -> None:
        """Queue a completion (it goes out with the next write); once durable, count it done and
        call *acknowledged* with the new count. A write that fails stops the run.
        """
        written = self.store.record_later(ended)
        self.remember(ended)
        with self._acks:
            self._unacknowledged += 1

        def done(future: Future[None]) -> None:
            if future.exception() is None:
                with self.lock:
                    self.done += 1
                    count = self.done
                acknowledged(count)
            else:
                self.check_written(future)
            with self._acks:
                self._unacknowledged -= 1
                self._acks.notify_all()

        written.add_done_callback(done)

    def check_written(self, written: Future[None]) -> None:
        """A record the store failed to take stops the run (and fails it, with exit 3)."""
        error = written.exception()
        if error is not None:
            with self.lock:
                self.errors.append(error)
            self.stop.request(self._stop_signal)

    def wait_for_acknowledgements(self, timeout: float | None) -> None:
        """Until every queued completion is durable (or failed), at most *timeout* seconds."""
        with self._acks:
            self._acks.wait_for(lambda: self._unacknowledged == 0, timeout)
