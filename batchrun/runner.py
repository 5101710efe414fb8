"""Running an eval set: which evals still need to run, how many at once, retries with backoff,
the rule for attempts lost with their pod (_policy.py), and an orderly stop when a signal asks
for one. Processes are _execution.py's job; what is stored, progress.py's.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

import structlog

from batchrun._attempts import Attempts, Then
from batchrun._console import Console
from batchrun._execution import ExecutionPolicy, Executor
from batchrun._failfast import FailFast
from batchrun._final import final_write
from batchrun._ledger import Holder, Ledger
from batchrun._policy import AloneGate, NextStep, next_step
from batchrun._scheduler import Scheduler
from batchrun._signals import StopRequest
from batchrun._state import EvalState
from batchrun._summary import RunInfo, log_end
from batchrun.errors import AttemptTakenError, FencedError, StoppedEarlyError, StoreError
from batchrun.fleet import default_worker_id
from batchrun.plan import RunPlan, RunSummary
from batchrun.progress import ProgressStore
from batchrun.state import StateKeeper

COMPACT_EVERY_S = 2.0  # for the whole fleet: each of W workers compacts about every W x this
BACKOFF_CAP_S = 300.0

Log = structlog.typing.FilteringBoundLogger


class Runner:
    """Runs the evals of a plan that the store does not record as done, *jobs* at a time."""

    def __init__(self, plan: RunPlan, store: ProgressStore, console: Console, stop: StopRequest | None = None) -> None:
        """Bind the plan to its store, the console its output goes through, and a stop request."""
        self.plan = plan
        self.store = store
        self.console = console
        self.stop = stop or StopRequest()
        worker = plan.worker_id or default_worker_id()
        self.fleet = store.fleet(worker, plan.heartbeat, plan.worker_timeout)
        self.fleet.status = self._fleet_status
        self.log: Log = structlog.get_logger("batchrun").bind(
            model=plan.model, eval_set=plan.eval_set.name, worker=worker, progress=store.location.uri
        )
        self.ledger = Ledger(store, self.stop, plan.stop_signal)
        self._stopping = ""  # what the bar says during a stop
        self._gate = AloneGate()
        self.failfast = FailFast(enabled=plan.fail_fast)

        # What every eval's environment shares, read once (os.environ decodes on every access).
        env = {
            **os.environ,
            "BATCHRUN_MODEL": plan.model,
            "BATCHRUN_EVAL_SET": plan.eval_set.name,
            "BATCHRUN_PROGRESS": store.location.uri,
        }
        policy = ExecutionPolicy(plan.jobs > 1, plan.eval_timeout, plan.stop_signal, plan.grace)
        self.executor = Executor(policy, console, self.stop, env, self.log)
        self.attempts = Attempts(
            plan=plan,
            store=store,
            ledger=self.ledger,
            executor=self.executor,
            console=console,
            stopping=self.stop.requested.is_set,
            log=self.log,
            states=None if plan.state is None else StateKeeper(store, plan.state, plan.model, plan.eval_set.name),
            failfast=self.failfast,
            stop_early=self._stop_early,
        )

    # --- the run --------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run what is missing; return when every eval is settled (here or by other workers), or
        the run stopped and every started attempt has ended.
        """
        evals = self.plan.eval_set.evals
        self.fleet.join(self.plan.grace)
        self.fleet.observe(force=True)
        self.ledger.load()
        self.attempts.tidy(self.ledger.state, evals)
        queue, lost_first = self._queue(evals)
        self.failfast.expect(len(queue))
        self.log.info(
            "run.started",
            total=len(evals),
            done=self.ledger.done,
            failed=len(self.ledger.failed),
            pending=len(queue),
            jobs=self.plan.jobs,
            max_attempts=self.plan.max_attempts,
            max_lost=self.plan.max_lost,
            writer=self.store.writer,
            other_workers=self.fleet.others_live(),
        )
        started = time.monotonic()
        self.stop.on_stop(self._begin_stop)
        self.console.start_bar(done=self.ledger.done, total=len(evals), status=self._bar_status)
        scheduler = Scheduler(self.ledger, self.fleet, queue, self.stop.requested)
        self.stop.on_stop(scheduler.wake)  # slots waiting for a retry's time see the stop at once
        scheduler.spread(first=lost_first)
        try:
            with (
                self.fleet.beating(self._fenced, self._store_failed),
                self.store.compacting(every=self._compact_every, final=self._final_write),
            ):
                try:
                    self._run_slots(scheduler)
                finally:
                    self.executor.kill_all()
        finally:
            self.console.stop_bar()
        if self.fleet.fenced is not None:
            raise self.fleet.fenced
        if self.ledger.errors:
            raise self.ledger.errors[0]
        summary = self._summary(len(evals), started)
        if self.failfast.verdict is not None:
            raise StoppedEarlyError(self.failfast.verdict)
        return summary

    def _summary(self, total: int, started: float) -> RunSummary:
        ledger = self.ledger
        stopped_by = None if self.failfast.verdict is not None else self.stop.signum
        summary = RunSummary(total, ledger.done, tuple(ledger.failed), ledger.ran, stopped_by=stopped_by)
        info = RunInfo(self.plan.model, self.plan.eval_set.name, self.store.location.uri, fresh=self.plan.fresh)
        log_end(self.log, self.console, info, ledger.state, summary, duration=time.monotonic() - started)
        return summary

    def _queue(self, evals: tuple[str, ...]) -> tuple[list[tuple[str, int]], int]:
        """The evals to run, with their round, and how many of them lead the queue because their
        last attempt was lost.
        """
        queue: list[tuple[str, int]] = []
        ledger = self.ledger
        for name in evals:
            state = ledger.state.state(name)
            if state is EvalState.DONE:
                ledger.done += 1
            elif state is EvalState.FAILED and not self.plan.retry_failed:
                ledger.failed.append(name)
            else:
                queue.append((name, ledger.state.epoch(name) + (1 if state is EvalState.FAILED else 0)))
        alone = [self._decide(*item)[0].alone for item in queue]
        lost = [item for item, first in zip(queue, alone, strict=True) if first]
        rest = [item for item, first in zip(queue, alone, strict=True) if not first]
        return lost + rest, len(lost)

    def _run_slots(self, scheduler: Scheduler) -> None:
        """*jobs* slots, each taking the scheduler's next eval until none is left."""

        def slot() -> None:
            while (item := scheduler.next()) is not None:
                later = self._run_eval(*item)
                if later is not None:
                    scheduler.give_back(*item, not_before=later)

        with ThreadPoolExecutor(self.plan.jobs, thread_name_prefix="batchrun-eval") as pool:
            futures: list[Future[None]] = [pool.submit(slot) for _ in range(self.plan.jobs)]
            try:
                for future in as_completed(futures):  # the first error stops the run, whichever eval it is
                    future.result()
            except BaseException:
                # A store that stopped answering (or a bug): stop the other evals the orderly way.
                self.stop.request(self.plan.stop_signal, reason="error")
                raise

    def _compact_every(self) -> float:
        """About every COMPACT_EVERY_S for the whole fleet: W workers each compact W times slower."""
        return COMPACT_EVERY_S * (1 + self.fleet.others_live()) * random.uniform(0.75, 1.25)  # noqa: S311

    def _fleet_status(self) -> tuple[tuple[str, ...], int]:
        return tuple(sorted(self.executor.running_evals())), self.attempts.completed

    def _fenced(self, exc: FencedError) -> None:
        """Another process took this worker's place: stop the evals, write nothing more."""
        self.log.error("worker.fenced", error=str(exc))
        self.stop.request(self.plan.stop_signal, reason="fenced")

    def _store_failed(self, exc: StoreError) -> None:
        with self.ledger.lock:
            self.ledger.errors.append(exc)
        self.stop.request(self.plan.stop_signal, reason="store failed")

    def _final_write(self) -> None:
        stopping = self.stop.requested.is_set()
        final_write(self.store, self.ledger, self.fleet, self.attempts.savers, self.log, stopping=stopping)

    def _stop_early(self) -> None:
        """Fail-fast's verdict: the command fails for every eval; stop the run the orderly way."""
        if not self.stop.request(self.plan.stop_signal, escalate=False, reason="fail-fast"):
            self.failfast.withdraw()  # a stop signal came first: it decides how the run ends
            return
        first = self.failfast.evidence[0]
        evals = [ending.eval for ending in self.failfast.evidence]
        self.log.error("run.stopped_early", evals=evals, exit_code=first.exit_code, last_line=first.last_line)

    # --- one eval -------------------------------------------------------------------------

    def _decide(self, name: str, epoch: int) -> tuple[NextStep, Holder | None]:
        """The next step for *name*, and the live worker that holds it instead, if any."""
        attempts = self.ledger.attempts(name, epoch)
        mine = self.executor.running_ids()
        running = mine | {
            a.id for a in attempts if a.outcome is None and self.fleet.holds(a.worker, a.writer) and a.id not in mine
        }
        holder = self.ledger.holder(name, epoch)
        if holder is not None and (
            holder.writer == self.store.writer or not self.fleet.holds(holder.worker, holder.writer)
        ):
            holder = None
        step = next_step(attempts, max_attempts=self.plan.max_attempts, max_lost=self.plan.max_lost, running=running)
        return step, holder

    def _run_eval(self, name: str, epoch: int) -> float | None:  # noqa: PLR0911 - each way out says why
        """Attempts of one eval until it completes, gives up, or the run stops: None then. When the
        eval goes back to the scheduler instead, the time (monotonic) before which it should not
        be taken again: 0 when another live worker holds it, the retry's time for a fail-fast probe.
        """
        while not self.stop.requested.is_set():
            settled = self.ledger.settled(name, epoch)
            if settled is not None:
                self.ledger.count_settled(name, settled)
                return None
            step, holder = self._decide(name, epoch)
            if holder is not None:
                return 0.0
            if step.give_up is not None:
                self.attempts.give_up(step.give_up, step.failures)
                return None
            then = self._attempt(name, epoch, step)
            if then is None:
                return 0.0
            if then in {Then.SETTLED, Then.STOPPED} or self.stop.requested.is_set():
                return None
            delay = self._backoff(step.failures + 1)
            self.log.info("eval.retry_scheduled", eval=name, delay_s=round(delay, 2), attempts=step.failures + 1)
            if then is Then.REQUEUE:
                return time.monotonic() + delay  # other evals' first attempts meanwhile
            if self.stop.requested.wait(delay):
                return None
            self.ledger.refresh()  # what other workers did meanwhile counts toward --max-attempts too
        return None

    def _attempt(self, name: str, epoch: int, step: NextStep) -> Then | None:
        """Claim the eval's next attempt and run it; None when another worker claimed it first."""
        with self._gate.entered(alone=step.alone, stop=self.stop.requested) as entered:
            if not entered:
                return Then.STOPPED
            # Backpressure: no new eval while the store is behind with what the last ones did.
            # Each running eval may have one batch (its start, the end before it) in flight and
            # one end queued; beyond that the store is behind, and the run waits for it.
            self.store.wait_for_room(2 * self.plan.jobs + 1, self.stop.requested)
            if self.stop.requested.is_set():
                return Then.STOPPED  # claim nothing that would never run
            number = self.ledger.next_number(name)
            alone = step.alone or self.plan.jobs == 1
            try:
                attempt, start_written = self.store.start_later(name, number, epoch, alone=alone)
            except AttemptTakenError as exc:
                self.log.info("eval.claimed_elsewhere", eval=name, attempt=number, worker_id=exc.worker)
                self.ledger.lost_claim(name, number, Holder(exc.worker, exc.writer))
                return None
            start_written.add_done_callback(self.ledger.check_written)
            self.ledger.remember(attempt)
            return self.attempts.run(attempt, step.failures, start_written, after_lost=step.alone)

    def _backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter: about base * 2^(n-1), between half and all of it."""
        ceiling = min(BACKOFF_CAP_S, self.plan.retry_backoff * 2 ** (attempts - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography

    def _bar_status(self) -> tuple[list[str], int, str]:
        return sorted(self.executor.running_evals()), len(self.ledger.failed), self._stopping

    def _begin_stop(self) -> None:
        """First stop signal: start no new eval, and stop the running ones in the background."""
        count = len(self.executor.running_evals())
        if count:
            evals = f"{count} eval{'s' if count > 1 else ''}"
            self._stopping = f"stopping: waiting up to {self.plan.grace:g} s for {evals} (Ctrl-C again to kill)"
        else:
            self._stopping = "stopping"
        self.console.update_bar()
        self._gate.wake()
        threading.Thread(target=self.executor.stop_running, name="batchrun-stopper", daemon=True).start()
