"""One claimed attempt: its process run, then how it ended recorded (completed once durable,
failed with its last output, interrupted by a stop) and its output saved beside the progress.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import structlog

from batchrun._console import Console
from batchrun._execution import Executor, Result
from batchrun._failfast import Ending, FailFast
from batchrun._ledger import Ledger
from batchrun._state import Attempt, Outcome, RunState
from batchrun.errors import FencedError, StoreError
from batchrun.plan import RunPlan
from batchrun.progress import ProgressStore
from batchrun.results import keep, keep_unkept
from batchrun.state import EvalFolder, RestoreStoppedError, StateKeeper

Log = structlog.typing.FilteringBoundLogger


class Then(enum.Enum):
    """What follows an attempt."""

    SETTLED = "settled"  # no further attempt now: completed, failed for good, or nothing more ours
    RETRY = "retry"  # another attempt after the backoff
    REQUEUE = "requeue"  # another attempt after the backoff, other evals first (a fail-fast probe)
    STOPPED = "stopped"  # the run stopped before the attempt started


class Attempts:
    """Runs attempts the runner claimed, and records their ends through the ledger."""

    def __init__(  # noqa: PLR0913 - the parts an attempt touches
        self,
        *,
        plan: RunPlan,
        store: ProgressStore,
        ledger: Ledger,
        executor: Executor,
        console: Console,
        stopping: Callable[[], bool],
        log: Log,
        states: StateKeeper | None = None,
        failfast: FailFast | None = None,
        stop_early: Callable[[], None] = lambda: None,
    ) -> None:
        """Record through *ledger*; *stopping* says whether the run is stopping; *stop_early* is
        called when an ending decides fail-fast's verdict (the run stops).
        """
        self.plan = plan
        self.store = store
        self.ledger = ledger
        self.executor = executor
        self.console = console
        self._stopping = stopping
        self.log = log
        self.savers: list[threading.Thread] = []  # logs saved in the background during a stop
        self.completed = 0  # completions of this process, acknowledged
        self.states = states
        self.failfast = failfast or FailFast(enabled=False)
        self._stop_early = stop_early

    def run(self, attempt: Attempt, failures: int, start: Future[None], *, after_lost: bool) -> Then:
        """Run one claimed attempt, whose start record *start* is being written, and record how it
        ended.
        """
        log = self.log.bind(eval=attempt.eval, attempt=attempt.number)
        if self.states is None:
            return self._run(attempt, failures, None, start, log, after_lost=after_lost)
        try:
            with self.states.folder(attempt, self._stopping) as folder:  # restored from the store
                return self._run(attempt, failures, folder, start, log, after_lost=after_lost)
        except RestoreStoppedError:  # the run is stopping: this attempt never started
            self.ledger.record_soon(attempt.finished(Outcome.INTERRUPTED, exit_code=None, reason="stopping"))
            return Then.STOPPED

    def _run(  # noqa: PLR0913 - the attempt and what it runs with
        self,
        attempt: Attempt,
        failures: int,
        folder: EvalFolder | None,
        start: Future[None],
        log: Log,
        *,
        after_lost: bool,
    ) -> Then:
        argv = self.plan.template.render(
            model=self.plan.model,
            eval_name=attempt.eval,
            eval_set=self.plan.eval_set.name,
            attempt=attempt.number,
            state="" if folder is None else folder.local,
        )
        # Logged once the start is durable: with group commit that write also carries the previous
        # eval's completion, so its `completed` line comes first. "alone" is news only when the
        # eval runs alone because its last attempt was lost.
        extra = {"alone": True} if after_lost else {}
        announced = threading.Event()  # the eval's output is shown after this line

        def started_durably(written: Future[None]) -> None:
            if written.exception() is None:  # else the run stops (Ledger.check_written)
                log.info("eval.started", command=argv, **extra)
            announced.set()

        start.add_done_callback(started_durably)
        probe = self.failfast.is_probe(attempt.eval)
        started = time.monotonic()
        with contextlib.nullcontext() if folder is None else folder.syncing():
            env = None if folder is None else {"BATCHRUN_STATE": folder.local}
            result = self.executor.execute(attempt, argv, env, announced)
        duration = round(time.monotonic() - started, 3)
        if result is None:  # the run is stopping: this attempt never started
            self.ledger.record_soon(attempt.finished(Outcome.INTERRUPTED, exit_code=None, reason="stopping"))
            return Then.STOPPED
        with self.ledger.lock:
            self.ledger.ran += 1
        completed = result.exit_code == 0 and not result.timed_out and not result.interrupted
        if folder is not None and not self._last_sync(attempt, folder, completed=completed, log=log):
            return Then.SETTLED  # another process holds this worker's place: nothing more is ours to record
        finished, written = self._finish(attempt, result, failures + 1, duration, log, start=start)
        then = self._judge(attempt.eval, result, duration, probe=probe, finished=finished)
        if result.output:  # after the outcome is recorded: a log that can't be saved loses nothing
            if self._stopping():  # don't let a failing store hold up the stop
                saving = threading.Thread(target=self._save_log, args=(attempt, result.output, log), daemon=True)
                saving.start()
                self.savers.append(saving)  # the final write waits for it, within its bound
            else:
                self._save_log(attempt, result.output, log)
        if folder is not None and written is not None:
            self._keep_results(attempt, folder, written, log)
        return then

    def _judge(self, name: str, result: Result, duration: float, *, probe: bool, finished: bool) -> Then:
        """What follows an attempt that ran: fail-fast hears how it ended (a verdict stops the run),
        and has a failed first attempt retried after other evals' first attempts.
        """
        if result.interrupted:
            return Then.SETTLED
        failed = result.exit_code != 0 and not result.timed_out
        last = next((line for line in reversed(result.tail) if line.strip()), "")
        ending = Ending(name, failed=failed, exit_code=result.exit_code, last_line=last.strip(), duration=duration)
        if self.failfast.ended(ending, probe=probe) is not None:
            self._stop_early()
        if finished:
            return Then.SETTLED
        return Then.REQUEUE if self.failfast.hold_back(ending, probe=probe) else Then.RETRY

    def _last_sync(self, attempt: Attempt, folder: EvalFolder, *, completed: bool, log: Log) -> bool:
        """The attempt's last sync, once its process has ended (also after a stop or a timeout);
        during a stop, bounded by --final-sync-timeout. The state of a completion is stored before
        the completion is: a store that fails then fails the run (the eval reruns from its last
        sync). False when nothing more is to be recorded (fenced, or a completion whose state
        could not be stored in time: recorded as interrupted).
        """
        assert self.states is not None  # noqa: S101 - a folder comes from the keeper
        timeout = self.states.config.final_timeout if self._stopping() else None
        try:
            finished = folder.last_sync(force=completed, timeout=timeout)
        except FencedError:
            return False
        except StoreError as exc:
            if completed:
                raise
            log.warning("state.sync_failed", error=str(exc))
            return True
        if not finished:
            log.warning("state.sync_cut_short", timeout_s=timeout)
            if completed:
                self.ledger.record_soon(attempt.finished(Outcome.INTERRUPTED, exit_code=0, reason="stopped"))
                return False
        return True

    def _keep_results(self, attempt: Attempt, folder: EvalFolder, written: Future[None], log: Log) -> None:
        """Once the completion is durable: its state becomes the eval's results (a failure here is
        finished by the next run, results.keep_unkept); the local folder goes.
        """
        if folder.stored_nothing:  # an empty folder, never synced: nothing to keep
            folder.forget_local()
            return
        self.store.flush()  # the completion goes out now, not with the next eval's start
        if written.exception() is not None:
            return  # not recorded (the run stops): the state stays, and the eval reruns from it
        try:
            kept = keep(self.store, attempt.eval, attempt.number)
        except StoreError as exc:
            log.warning("state.results_not_kept", error=str(exc))
            return
        except FencedError:
            return
        log.info("state.results_kept", files=kept)
        folder.forget_local()

    def tidy(self, state: RunState, evals: tuple[str, ...]) -> None:
        """At start-up: finish keeping the results of completions whose keeping a kill cut short."""
        if self.states is None:
            return
        try:
            kept = keep_unkept(self.store, state, evals)
        except StoreError as exc:
            self.log.warning("state.results_not_kept", error=str(exc))
            return
        if kept:
            self.log.info("state.results_kept", evals=len(kept), after="an interrupted keep")

    def _save_log(self, attempt: Attempt, output: bytes, log: Log) -> None:
        try:
            self.store.save_log(attempt.eval, attempt.number, output)
        except StoreError as exc:
            log.warning("eval.log_not_saved", error=str(exc))
        except FencedError:
            pass  # another process holds this worker's place: nothing more is ours to write

    def _finish(  # noqa: PLR0913 - the attempt, how it ended, and its start record
        self, attempt: Attempt, result: Result, attempts: int, duration: float, log: Log, *, start: Future[None]
    ) -> tuple[bool, Future[None] | None]:
        """Record how an attempt ended: whether the eval needs no further attempt now, and for a
        completion, the future that resolves once it is durable.
        """
        total = len(self.plan.eval_set.evals)
        if result.interrupted:
            self.ledger.record_soon(attempt.finished(Outcome.INTERRUPTED, exit_code=result.exit_code, reason="stopped"))
            # Not waited for (a stop is under way): logged after `eval.started`, which waits for the
            # start record (callbacks run in the order they were added).
            start.add_done_callback(
                lambda _: log.warning("eval.interrupted", exit_code=result.exit_code, duration_s=duration)
            )
            return True, None
        if result.exit_code == 0 and not result.timed_out:
            # Written with the next attempt's start (group commit); acknowledged once durable.
            def acknowledged(done: int) -> None:
                self.completed += 1
                log.info("eval.completed", exit_code=0, duration_s=duration, done=done, total=total)
                self.console.update_bar(done)

            written = self.ledger.record_completion(attempt.finished(Outcome.COMPLETED, exit_code=0), acknowledged)
            return True, written
        final = attempts >= self.plan.max_attempts
        self.ledger.record(
            attempt.finished(
                Outcome.FAILED, exit_code=result.exit_code, final=final, reason=result.reason, tail=result.tail
            )
        )
        if final:
            with self.ledger.lock:
                self.ledger.failed.append(attempt.eval)
        log.warning(
            "eval.failed",
            exit_code=result.exit_code,
            reason=result.reason,
            duration_s=duration,
            attempts=attempts,
            final=final,
            done=self.ledger.done,
            total=total,
            last_output=list(result.tail[-5:]),
        )
        return final, None

    def give_up(self, record: Attempt, failures: int) -> None:
        """Record an eval as failed whose attempts are used up, or that kept killing its pod."""
        self.ledger.record(record)
        with self.ledger.lock:
            self.ledger.failed.append(record.eval)
        self.log.warning(
            "eval.failed",
            eval=record.eval,
            attempt=record.number,
            exit_code=record.exit_code,
            reason=record.reason,
            attempts=failures,
            final=True,
        )
