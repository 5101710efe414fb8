"""Running attempts as processes: start one, pump its output, enforce its timeout, and stop every
running one in order when the run stops (or kill them when batchrun must go).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

import structlog

from batchrun._console import Console
from batchrun._process import READY_WAIT_S, EvalProcess, Output
from batchrun._signals import StopRequest
from batchrun._state import Attempt


@dataclass(frozen=True, slots=True)
class Result:
    """How one attempt's process ended, and what it printed."""

    exit_code: int
    tail: tuple[str, ...]
    output: bytes
    interrupted: bool = False
    timed_out: bool = False
    reason: str | None = None


@dataclass(slots=True)
class _Running:
    process: EvalProcess
    eval: str
    stopped: bool = False  # sent the stop signal because batchrun is stopping


@dataclass(frozen=True, slots=True)
class ExecutionPolicy:
    """How attempts are run and stopped."""

    prefix_output: bool
    eval_timeout: float | None
    stop_signal: signal.Signals
    grace: float


class Executor:
    """Starts attempts' processes and keeps track of the running ones."""

    def __init__(
        self,
        policy: ExecutionPolicy,
        console: Console,
        stop: StopRequest,
        env: dict[str, str],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """Run with *env* (plus the attempt's own variables); stop in order when *stop* fires."""
        self.policy = policy
        self.console = console
        self.stop = stop
        self._env = env
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self.log = log

    def running_ids(self) -> set[str]:
        """Ids of the attempts whose processes run now."""
        with self._lock:
            return set(self._running)

    def running_evals(self) -> list[str]:
        """Names of the evals whose attempts run now."""
        with self._lock:
            return [entry.eval for entry in self._running.values()]

    def execute(
        self,
        attempt: Attempt,
        argv: list[str],
        env: dict[str, str] | None = None,
        announced: threading.Event | None = None,
    ) -> Result | None:
        """Run one attempt in its own process group (with *env* added to the run's environment),
        its output shown once *announced* is set (its `eval.started` line); None if the run
        began stopping first.
        """
        env = {**self._env, "BATCHRUN_EVAL": attempt.eval, "BATCHRUN_ATTEMPT": str(attempt.number), **(env or {})}
        with self._lock:  # no process starts once the stop has taken its list of running ones
            if self.stop.requested.is_set():
                return None
            try:
                process = EvalProcess(argv, env)
            except OSError as exc:
                # 127/126 as a shell would say: not found / not executable.
                code = 127 if isinstance(exc, FileNotFoundError) else 126
                return Result(code, (f"cannot start {argv[0]!r}: {exc.strerror or exc}",), b"", reason="spawn")
            running = self._running[attempt.id] = _Running(process, attempt.eval)
        output = Output()
        prefix = f"[{attempt.eval}] ".encode() if self.policy.prefix_output else b""
        timeout = self.policy.eval_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = not process.pump(self.console, prefix, output, deadline, announced)
        if timed_out:
            if announced is not None:
                announced.wait(READY_WAIT_S)  # the line after its `eval.started` line
            self.log.warning("eval.timed_out", eval=attempt.eval, attempt=attempt.number, timeout_s=timeout)
            process.stop(self.policy.stop_signal, self.policy.grace, self.stop.urgent)
            process.pump(self.console, prefix, output, None, announced)
        code = process.reap()
        with self._lock:
            del self._running[attempt.id]
        tail = tuple(output.tail)
        if timed_out:
            tail = (*tail, f"batchrun: timed out after {timeout:g} s")
        reason = "timeout" if timed_out else ("signal" if code < 0 else "exit")
        return Result(code, tail, output.read(), interrupted=running.stopped, timed_out=timed_out, reason=reason)

    def stop_running(self) -> None:
        """Send the stop signal to every running attempt, wait up to the grace, then kill them."""
        with self._lock:
            running = [e for e in self._running.values() if not e.process.exited()]
            for entry in running:
                entry.stopped = True  # whatever it exits with now, it was interrupted
        signum, reason = self.stop.signum, self.stop.reason
        why = {"reason": reason} if reason else {"signal": None if signum is None else signal.Signals(signum).name}
        self.log.warning("run.stopping", **why, running=len(running))
        for entry in running:
            entry.process.send(self.policy.stop_signal)
        deadline = time.monotonic() + self.policy.grace
        while not all(e.process.exited() for e in running) and time.monotonic() < deadline:
            if self.stop.urgent.wait(0.05):
                break
        for entry in running:
            entry.process.send(signal.SIGKILL)

    def kill_all(self) -> None:
        """No child outlives batchrun, whatever ended the run."""
        with self._lock:
            running = list(self._running.values())
        for entry in running:
            entry.process.send(signal.SIGKILL)
