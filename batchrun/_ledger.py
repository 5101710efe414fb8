"""A run's ledger: the records this process knows (what the store held at start, what it recorded
since, what other workers recorded meanwhile), its counts of done and failed evals, and the
acknowledgement of completions once they are durable.

Which worker holds an eval now (:meth:`Ledger.holder`) comes from the records and from claims
this process lost: the newest attempt's writer holds the eval while that attempt runs, and while
it waits to retry a failure that was not final. Whether that writer is alive is the fleet's call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from batchrun._signals import StopRequest
from batchrun._state import Attempt, EvalState, Outcome, RunState
from batchrun.progress import ProgressStore

COMPACT_AT_START = 50  # unfolded events at start-up beyond which the run compacts first


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds an eval: a worker id and one of its processes (a writer)."""

    worker: str
    writer: str


class Ledger:
    """What one run knows of its records, and what it counts; thread-safe."""

    def __init__(self, store: ProgressStore, stop: StopRequest, stop_signal: int) -> None:
        """Keep the records of *store*; a record it fails to take requests a stop with *stop_signal*."""
        self.store = store
        self.stop = stop
        self._stop_signal = stop_signal
        self.lock = threading.Lock()
        self.state = RunState()
        self._taken: dict[str, tuple[int, Holder]] = {}  # per eval, the newest claim another writer won
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

    def refresh(self, *, light: bool = False) -> None:
        """Fold the store's current records into the ledger (*light*: only what is compacted)."""
        state = self.store.load_folded() if light else self.store.load()
        with self.lock:
            self.state.merge(a for by_id in state.attempts.values() for a in by_id.values())

    def attempts(self, name: str, epoch: int) -> list[Attempt]:
        """The attempts of round *epoch* of *name*, oldest first."""
        with self.lock:
            return [a for a in self.state.of(name) if a.epoch == epoch]

    def next_number(self, name: str) -> int:
        """The number to claim for the next attempt of *name*."""
        with self.lock:
            taken = self._taken.get(name)
            return max(self.state.next_number(name), 1 if taken is None else taken[0] + 1)

    def lost_claim(self, name: str, number: int, holder: Holder) -> None:
        """Another writer won the claim on attempt *number* of *name*."""
        with self.lock:
            if number > self._taken.get(name, (0, holder))[0]:
                self._taken[name] = (number, holder)

    def holder(self, name: str, epoch: int) -> Holder | None:
        """Who holds *name* now: the winner of a claim newer than any record, or the writer of
        the newest attempt while it runs or waits to retry; None when the newest attempt ended
        other than by a failure with attempts left.
        """
        with self.lock:
            attempts = [a for a in self.state.of(name) if a.epoch == epoch]
            newest = attempts[-1] if attempts else None
            taken = self._taken.get(name)
        if taken is not None and (newest is None or newest.number < taken[0]):
            return taken[1]
        if newest is None:
            return None
        if newest.outcome is None or (newest.outcome is Outcome.FAILED and not newest.final):
            return Holder(newest.worker, newest.writer)
        return None

    def settled(self, name: str, epoch: int) -> EvalState | None:
        """DONE or FAILED once the eval needs nothing more in round *epoch*; else None."""
        with self.lock:
            state = self.state.state(name, epoch)
        return None if state is EvalState.PENDING else state

    def count_settled(self, name: str, state: EvalState) -> None:
        """Count an eval another worker settled."""
        with self.lock:
            if state is EvalState.DONE:
                self.done += 1
            else:
                self.failed.append(name)

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

    def record_completion(self, ended: Attempt, acknowledged: Callable[[int], None]) -> Future[None]:
        """Queue a completion (it goes out with the next write); once durable, count it done and
        call *acknowledged* with the new count. A write that fails stops the run. The future
        resolves once the completion is durable.
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
        return written

    def check_written(self, written: Future[None]) -> None:
        """A record the store failed to take stops the run (and fails it, with exit 3)."""
        error = written.exception()
        if error is not None:
            with self.lock:
                self.errors.append(error)
            self.stop.request(self._stop_signal, reason="store failed")

    def wait_for_acknowledgements(self, timeout: float | None) -> None:
        """Until every queued completion is durable (or failed), at most *timeout* seconds."""
        with self._acks:
            self._acks.wait_for(lambda: self._unacknowledged == 0, timeout)
