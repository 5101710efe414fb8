"""Which eval a free slot of this worker takes next, when several workers share a run.

A slot takes the first eval of its queue that is neither settled (done, or failed in its round)
nor held by another live worker (:meth:`Ledger.holder`, :meth:`Fleet.holds`), nor waiting out the
backoff of a retry that went back to the queue (a fail-fast probe, _failfast.py). Claims decide races: a
slot that loses the claim on an attempt gives the eval back, and it is held by the winner from
then on. When every eval left is held elsewhere the slots wait, looking again every few seconds,
and take the evals of workers that die; a slot ends once its queue is empty, so a worker exits
when every eval of the set is settled (or being run by a slot of its own).
"""

from __future__ import annotations

import threading
import time
import zlib

from batchrun._ledger import Ledger
from batchrun.fleet import Fleet

REFRESH_S = 2.0  # with other workers about: how stale the ledger may be when a slot picks


class Scheduler:
    """The evals this worker may still take, handed to its slots one at a time; thread-safe."""

    def __init__(self, ledger: Ledger, fleet: Fleet, queue: list[tuple[str, int]], stop: threading.Event) -> None:
        """Hand out *queue* ((eval, round) pairs, in order) until *stop* is set."""
        self.ledger = ledger
        self.fleet = fleet
        self.stop = stop
        self._cond = threading.Condition()
        self._queue = list(queue)
        self._not_before: dict[tuple[str, int], float] = {}  # retries that wait in the queue
        self._refreshed = time.monotonic()
        self._spread = False
        self.poll_s = min(REFRESH_S, fleet.heartbeat_s)

    def spread(self, first: int = 0) -> None:
        """With other workers about, start at a place of our own in the set (fewer lost claims);
        the *first* evals (whose last attempt was lost) stay first.
        """
        with self._cond:
            if self._spread or not self.fleet.others_live():
                return
            self._spread = True
            head, rest = self._queue[:first], self._queue[first:]
            if rest:
                offset = zlib.crc32(self.fleet.worker.encode()) % len(rest)
                self._queue = head + rest[offset:] + rest[:offset]

    def next(self) -> tuple[str, int] | None:
        """The next eval for a free slot; waits while every eval left is held by a live worker;
        None once the queue is empty or the run stops.
        """
        with self._cond:
            while not self.stop.is_set() and self._queue:
                if self.fleet.others_live() and time.monotonic() - self._refreshed > REFRESH_S:
                    self._refresh(light=self._refreshed > 0)
                pick = self._pick()
                if pick is not None:
                    self._queue.remove(pick)
                    return pick
                if not self._queue:
                    break  # the last evals were settled by others just now
                now = time.monotonic()
                retries = [at - now for item, at in self._not_before.items() if item in self._queue]
                self._cond.wait(max(0.01, min([self.poll_s, *retries])))
                self._refresh(light=True)
            return None

    def wake(self) -> None:
        """Have waiting slots look again now (the run is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def give_back(self, name: str, epoch: int, not_before: float = 0.0) -> None:
        """A slot found the eval held elsewhere (or lost its claim): keep it for later, and look
        at the store again before the next pick (others started meanwhile: spread out from them).
        A retry given back is not taken before *not_before* (monotonic).
        """
        with self._cond:
            self._queue.append((name, epoch))
            if not_before > 0:
                self._not_before[name, epoch] = not_before
                self._cond.notify_all()
                return
            self._refreshed = -1e18
            self._cond.notify_all()
        self.spread()

    def _refresh(self, *, light: bool = False) -> None:
        """Read what others did: *light* reads the snapshot only (what compactions folded, a
        bounded cost per interval); a full refresh reads the unfolded events too.
        """
        self.ledger.refresh(light=light)
        self.fleet.observe()
        self._refreshed = time.monotonic()

    def _pick(self) -> tuple[str, int] | None:
        refreshed = False
        while True:
            for item in list(self._queue):
                name, epoch = item
                settled = self.ledger.settled(name, epoch)
                if settled is not None:
                    self.ledger.count_settled(name, settled)
                    self._queue.remove(item)
                    continue
                if self._not_before.get(item, 0.0) > time.monotonic():
                    continue  # a retry waiting out its backoff
                held = self.ledger.holder(name, epoch)
                if held is None or held.writer == self.ledger.store.writer:  # free, or our own retry
                    self._not_before.pop(item, None)
                    return item
                if self.fleet.holds(held.worker, held.writer):
                    continue
                if refreshed:
                    return item
                # Its holder is gone: its last records may be newer than what we read.
                self._refresh()
                refreshed = True
                break
            else:
                return None
