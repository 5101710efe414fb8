"""Running an eval set: which evals still need to run, how many at once, one subprocess per
attempt, retries with backoff, and an orderly stop when a signal asks for one.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import structlog

from batchrun._console import Console
from batchrun._process import EvalProcess, Output
from batchrun._signals import StopRequest
from batchrun._state import Attempt, EvalState, Outcome, RunState
from batchrun.command import CommandTemplate
from batchrun.errors import EXIT_EVAL_FAILED, EXIT_OK
from batchrun.evalset import EvalSet
from batchrun.progress import ProgressStore

COMPACT_EVERY_S = 2.0
BACKOFF_CAP_S = 300.0


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything `run` needs to know besides where progress lives."""

    model: str
    eval_set: EvalSet
    template: CommandTemplate
    jobs: int = 1
    max_attempts: int = 3
    retry_backoff: float = 5.0
    retry_failed: bool = False
    eval_timeout: float | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    grace: float = 10.0


@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a run ended."""

    total: int
    done: int
    failed: tuple[str, ...]
    ran: int
    stopped_by: int | None = None

    @property
    def exit_code(self) -> int:
        """128 + the signal that stopped the run; else 0 when every eval is done, 1 otherwise."""
        if self.stopped_by is not None:
            return 128 + self.stopped_by
        return EXIT_EVAL_FAILED if self.failed or self.done < self.total else EXIT_OK


@dataclass(slots=True)
class _Running:
    """An attempt's process while it runs."""

    process: EvalProcess
    stopped: bool = False  # sent the stop signal because batchrun is stopping


@dataclass(slots=True)
class _Result:
    exit_code: int
    tail: tuple[str, ...]
    output: bytes
    interrupted: bool = False
    timed_out: bool = False
    reason: str | None = None


class Runner:
    """Runs the evals of a plan that the store does not record as done, *jobs* at a time."""

    def __init__(self, plan: RunPlan, store: ProgressStore, console: Console, stop: StopRequest | None = None) -> None:
        """Bind the plan to its store, the console its output goes through, and a stop request."""
        self.plan = plan
        self.store = store
        self.console = console
        self.stop = stop or StopRequest()
        self.log = structlog.get_logger("batchrun").bind(
            model=plan.model, eval_set=plan.eval_set.name, worker=store.worker, progress=store.location.uri
        )
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._state = RunState()
        self._done = 0
        self._failed: list[str] = []
        self._ran = 0
        self._acks = threading.Condition()
        self._unacknowledged = 0
        self._errors: list[BaseException] = []
        # What every eval's environment shares, read once (os.environ decodes on every access).
        self._env = {
            **os.environ,
            "BATCHRUN_MODEL": plan.model,
            "BATCHRUN_EVAL_SET": plan.eval_set.name,
            "BATCHRUN_PROGRESS": store.location.uri,
        }

    # --- the run --------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run what is missing; return when every started attempt has ended or been stopped."""
        evals = self.plan.eval_set.evals
        self._state = self.store.load()
        queue: list[tuple[str, int]] = []
        for name in evals:
            state = self._state.state(name)
            if state is EvalState.DONE:
                self._done += 1
            elif state is EvalState.FAILED and not self.plan.retry_failed:
                self._failed.append(name)
            else:
                epoch = self._state.epoch(name) + (1 if state is EvalState.FAILED else 0)
                queue.append((name, epoch))
        self.log.info(
            "run.started",
            total=len(evals),
            done=self._done,
            failed=len(self._failed),
            pending=len(queue),
            jobs=self.plan.jobs,
            max_attempts=self.plan.max_attempts,
        )
        started = time.monotonic()
        self.stop.on_stop(self._begin_stop)
        self.console.start_bar(done=self._done, total=len(evals))
        try:
            with self.store.compacting(every=COMPACT_EVERY_S):
                try:
                    self._run_queue(queue)
                    self._wait_for_acknowledgements()
                finally:
                    self._kill_all()
        finally:
            self.console.stop_bar()
        summary = RunSummary(
            total=len(evals), done=self._done, failed=tuple(self._failed), ran=self._ran, stopped_by=self.stop.signum
        )
        fields = {
            "total": summary.total,
            "done": summary.done,
            "failed": len(summary.failed),
            "ran": summary.ran,
            "duration_s": round(time.monotonic() - started, 3),
            "exit_code": summary.exit_code,
        }
        if summary.stopped_by is not None:
            self.log.warning("run.interrupted", signal=signal.Signals(summary.stopped_by).name, **fields)
        else:
            self.log.info("run.finished", **fields)
        return summary

    def _run_queue(self, queue: list[tuple[str, int]]) -> None:
        with ThreadPoolExecutor(self.plan.jobs, thread_name_prefix="batchrun-eval") as pool:
            futures: list[Future[None]] = [pool.submit(self._run_eval, name, epoch) for name, epoch in queue]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                # A store that stopped answering (or a bug): stop the other evals the orderly way.
                self.stop.request(self.plan.stop_signal)
                for future in futures:
                    future.cancel()
                raise

    # --- one eval -------------------------------------------------------------------------

    def _run_eval(self, name: str, epoch: int) -> None:
        """Attempts of one eval until it completes, gives up, or the run stops."""
        while not self.stop.requested.is_set():
            with self._lock:
                counted = self._state.counted(name, epoch)
                number = self._state.next_number(name)
            if len(counted) >= self.plan.max_attempts:
                self._give_up(name, counted)
                return
            # The start record is written while the process launches (one store write at most): a
            # pod lost in between loses the count of this one attempt, nothing else.
            attempt, start_written = self.store.start_later(name, number, epoch)
            start_written.add_done_callback(self._check_written)
            self._remember(attempt)
            log = self.log.bind(eval=name, attempt=number)
            argv = self.plan.template.render(
                model=self.plan.model, eval_name=name, eval_set=self.plan.eval_set.name, attempt=number
            )
            log.info("eval.started", command=argv)
            started = time.monotonic()
            result = self._execute(attempt, argv)
            duration = round(time.monotonic() - started, 3)
            if result is None:  # the run is stopping: this attempt never started
                self._record(attempt.finished(Outcome.INTERRUPTED, exit_code=None, reason="stopping"))
                return
            with self._lock:
                self._ran += 1
            if result.output:
                self.store.save_log(name, number, result.output)
            if self._finish(attempt, result, len(counted) + 1, duration, log):
                return
            delay = self._backoff(len(counted) + 1)
            log.info("eval.retry_scheduled", delay_s=round(delay, 2), attempts=len(counted) + 1)
            if self.stop.requested.wait(delay):
                return

    def _finish(
        self,
        attempt: Attempt,
        result: _Result,
        attempts: int,
        duration: float,
        log: structlog.typing.FilteringBoundLogger,
    ) -> bool:
        """Record how an attempt ended; True when the eval needs no further attempt now."""
        total = len(self.plan.eval_set.evals)
        if result.interrupted:
            self._record(attempt.finished(Outcome.INTERRUPTED, exit_code=result.exit_code, reason="stopped"))
            log.warning("eval.interrupted", exit_code=result.exit_code, duration_s=duration)
            return True
        if result.exit_code == 0 and not result.timed_out:
            # Written with the next attempt's start (group commit); acknowledged once durable.
            ended = attempt.finished(Outcome.COMPLETED, exit_code=0)
            written = self.store.record_later(ended)
            self._remember(ended)
            with self._acks:
                self._unacknowledged += 1
            written.add_done_callback(lambda future: self._acknowledge(future, log, duration))
            return True
        final = attempts >= self.plan.max_attempts
        self._record(
            attempt.finished(
                Outcome.FAILED, exit_code=result.exit_code, final=final, reason=result.reason, tail=result.tail
            )
        )
        if final:
            with self._lock:
                self._failed.append(attempt.eval)
        log.warning(
            "eval.failed",
            exit_code=result.exit_code,
            reason=result.reason,
            duration_s=duration,
            attempts=attempts,
            final=final,
            done=self._done,
            total=total,
            last_output=list(result.tail[-5:]),
        )
        return final

    def _acknowledge(self, written: Future[None], log: structlog.typing.FilteringBoundLogger, duration: float) -> None:
        """Log a completion once its record is durable; a write that failed stops the run."""
        if written.exception() is None:
            with self._lock:
                self._done += 1
                done = self._done
            log.info("eval.completed", exit_code=0, duration_s=duration, done=done, total=len(self.plan.eval_set.evals))
            self.console.update_bar(done)
        else:
            self._check_written(written)
        with self._acks:
            self._unacknowledged -= 1
            self._acks.notify_all()

    def _check_written(self, written: Future[None]) -> None:
        """A record the store failed to take stops the run (and fails it, with exit 3)."""
        error = written.exception()
        if error is not None:
            with self._lock:
                self._errors.append(error)
            self.stop.request(self.plan.stop_signal)

    def _wait_for_acknowledgements(self) -> None:
        self.store.flush()
        with self._acks:
            self._acks.wait_for(lambda: self._unacknowledged == 0)
        if self._errors:
            raise self._errors[0]

    def _give_up(self, name: str, counted: list[Attempt]) -> None:
        """Record an eval as failed whose attempts are used up, e.g. by pods that died during it."""
        latest = counted[-1]
        if latest.outcome is None:
            note = "attempt never finished: batchrun or its pod died during it (killed, OOM, node lost)"
            record = latest.finished(Outcome.FAILED, exit_code=None, final=True, reason="lost", tail=(note,))
        else:
            record = replace(latest, final=True)
        self._record(record)
        with self._lock:
            self._failed.append(name)
        self.log.warning(
            "eval.failed",
            eval=name,
            attempt=latest.number,
            exit_code=record.exit_code,
            reason=record.reason,
            attempts=len(counted),
            final=True,
        )

    def _record(self, attempt: Attempt) -> None:
        """Store a record durably, then count it in this run's state."""
        self.store.record(attempt)
        self._remember(attempt)

    def _remember(self, attempt: Attempt) -> None:
        with self._lock:
            self._state.add(attempt)

    def _backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter: about base * 2^(n-1), between half and all of it."""
        ceiling = min(BACKOFF_CAP_S, self.plan.retry_backoff * 2 ** (attempts - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography

    # --- processes ------------------------------------------------------------------------

    def _execute(self, attempt: Attempt, argv: list[str]) -> _Result | None:
        """Run one attempt in its own process group; None if the run began stopping first."""
        env = {**self._env, "BATCHRUN_EVAL": attempt.eval, "BATCHRUN_ATTEMPT": str(attempt.number)}
        with self._lock:  # no process starts once the stop has taken its list of running ones
            if self.stop.requested.is_set():
                return None
            try:
                process = EvalProcess(argv, env)
            except OSError as exc:
                # 127/126 as a shell would say: not found / not executable.
                code = 127 if isinstance(exc, FileNotFoundError) else 126
                return _Result(code, (f"cannot start {argv[0]!r}: {exc.strerror or exc}",), b"", reason="spawn")
            running = self._running[attempt.id] = _Running(process)
        output = Output()
        prefix = f"[{attempt.eval}] ".encode() if self.plan.jobs > 1 else b""
        timeout = self.plan.eval_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = not process.pump(self.console, prefix, output, deadline)
        if timed_out:
            self.log.warning("eval.timed_out", eval=attempt.eval, attempt=attempt.number, timeout_s=timeout)
            process.stop(self.plan.stop_signal, self.plan.grace, self.stop.urgent)
            process.pump(self.console, prefix, output, None)
        code = process.reap()
        with self._lock:
            del self._running[attempt.id]
        tail = tuple(output.tail)
        if timed_out:
            tail = (*tail, f"batchrun: timed out after {timeout:g} s")
        reason = "timeout" if timed_out else ("signal" if code < 0 else "exit")
        return _Result(code, tail, output.read(), interrupted=running.stopped, timed_out=timed_out, reason=reason)

    def _begin_stop(self) -> None:
        """First stop signal: start no new eval, and stop the running ones in the background."""
        threading.Thread(target=self._stop_running, name="batchrun-stopper", daemon=True).start()

    def _stop_running(self) -> None:
        with self._lock:
            running = [e for e in self._running.values() if not e.process.exited()]
            for entry in running:
                entry.stopped = True  # whatever it exits with now, it was interrupted
        self.log.warning("run.stopping", signal=_signal_name(self.stop.signum), running=len(running))
        for entry in running:
            entry.process.send(self.plan.stop_signal)
        deadline = time.monotonic() + self.plan.grace
        while not all(e.process.exited() for e in running) and time.monotonic() < deadline:
            if self.stop.urgent.wait(0.05):
                break
        for entry in running:
            entry.process.send(signal.SIGKILL)

    def _kill_all(self) -> None:
        """No child outlives batchrun, whatever ended the run."""
        with self._lock:
            running = list(self._running.values())
        for entry in running:
            entry.process.send(signal.SIGKILL)


def _signal_name(signum: int | None) -> str | None:
    return None if signum is None else signal.Signals(signum).name
