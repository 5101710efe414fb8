"""Running an eval set: which evals still need to run, how many at once, one subprocess each."""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

import structlog

from batchrun._console import Console
from batchrun._state import EvalState, Outcome, RunState
from batchrun.command import CommandTemplate
from batchrun.errors import EXIT_EVAL_FAILED, EXIT_OK
from batchrun.evalset import EvalSet
from batchrun.progress import ProgressStore

TAIL_LINES = 20
COMPACT_EVERY_S = 2.0


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything `run` needs to know besides where progress lives."""

    model: str
    eval_set: EvalSet
    template: CommandTemplate
    jobs: int = 1


@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a run ended."""

    total: int
    done: int
    failed: tuple[str, ...]
    ran: int

    @property
    def exit_code(self) -> int:
        """0 when every eval of the set is done, 1 when any failed."""
        return EXIT_EVAL_FAILED if self.failed or self.done < self.total else EXIT_OK


class Runner:
    """Runs the evals of a plan that the store does not record as done, *jobs* at a time."""

    def __init__(self, plan: RunPlan, store: ProgressStore, console: Console) -> None:
        """Bind the plan to its store and to the console its output goes through."""
        self.plan = plan
        self.store = store
        self.console = console
        self.log = structlog.get_logger("batchrun").bind(
            model=plan.model, eval_set=plan.eval_set.name, worker=store.worker, progress=store.location.uri
        )
        self._lock = threading.Lock()
        self._done = 0
        self._failed: list[str] = []

    def run(self) -> RunSummary:
        """Run what is missing; return when every started eval has ended."""
        evals = self.plan.eval_set.evals
        state = self.store.load()
        pending = [name for name in evals if state.state(name) is not EvalState.DONE]
        self._done = len(evals) - len(pending)
        self.log.info("run.started", total=len(evals), done=self._done, pending=len(pending), jobs=self.plan.jobs)
        started = time.monotonic()
        self.console.start_bar(done=self._done, total=len(evals))
        try:
            with self.store.compacting(every=COMPACT_EVERY_S):
                self._run_all(pending, state)
        finally:
            self.console.stop_bar()
        summary = RunSummary(total=len(evals), done=self._done, failed=tuple(self._failed), ran=len(pending))
        self.log.info(
            "run.finished",
            total=summary.total,
            done=summary.done,
            failed=len(summary.failed),
            ran=summary.ran,
            duration_s=round(time.monotonic() - started, 3),
            exit_code=summary.exit_code,
        )
        return summary

    def _run_all(self, pending: list[str], state: RunState) -> None:
        if self.plan.jobs == 1:
            for name in pending:
                self._run_eval(name, state.next_number(name))
            return
        with ThreadPoolExecutor(self.plan.jobs, thread_name_prefix="batchrun-eval") as pool:
            futures = [pool.submit(self._run_eval, name, state.next_number(name)) for name in pending]
            for future in futures:
                future.result()

    def _run_eval(self, name: str, number: int) -> None:
        plan = self.plan
        attempt = self.store.start(name, number)
        argv = plan.template.render(model=plan.model, eval_name=name, eval_set=plan.eval_set.name, attempt=number)
        log = self.log.bind(eval=name, attempt=number)
        log.info("eval.started", command=argv)
        started = time.monotonic()
        exit_code, tail = self._execute(argv, name, number)
        duration = round(time.monotonic() - started, 3)
        if exit_code == 0:
            self.store.finish(attempt, Outcome.COMPLETED, exit_code)
            with self._lock:
                self._done += 1
                done = self._done
            log.info("eval.completed", exit_code=0, duration_s=duration, done=done, total=len(plan.eval_set.evals))
        else:
            self.store.finish(attempt, Outcome.FAILED, exit_code, tail)
            with self._lock:
                self._failed.append(name)
                done = self._done
            log.warning(
                "eval.failed",
                exit_code=exit_code,
                duration_s=duration,
                done=done,
                total=len(plan.eval_set.evals),
                last_output=list(tail[-5:]),
            )
        self.console.update_bar(done)

    def _execute(self, argv: list[str], name: str, number: int) -> tuple[int, tuple[str, ...]]:
        """Run one command in its own process group; return its exit code and last output lines."""
        env = {
            **os.environ,
            "BATCHRUN_MODEL": self.plan.model,
            "BATCHRUN_EVAL_SET": self.plan.eval_set.name,
            "BATCHRUN_EVAL": name,
            "BATCHRUN_ATTEMPT": str(number),
            "BATCHRUN_PROGRESS": self.store.location.uri,
        }
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            # 127/126 as a shell would say: not found / not executable.
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            return code, (f"cannot start {argv[0]!r}: {exc.strerror or exc}",)
        prefix = f"[{name}] ".encode() if self.plan.jobs > 1 else b""
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        assert proc.stdout is not None  # noqa: S101 - both pipes were asked for
        assert proc.stderr is not None  # noqa: S101
        err_pump = threading.Thread(target=self._pump, args=(proc.stderr, prefix, tail, True), daemon=True)
        err_pump.start()
        self._pump(proc.stdout, prefix, tail, stderr=False)
        err_pump.join()
        return proc.wait(), tuple(tail)

    def _pump(self, stream: IO[bytes], prefix: bytes, tail: collections.deque[str], stderr: bool) -> None:  # noqa: FBT001 - Thread args are positional
        with stream:
            for line in iter(stream.readline, b""):
                self.console.eval_line(line, stderr=stderr, prefix=prefix)
                tail.append(line.decode("utf-8", errors="replace").rstrip("\n"))


def describe_exit(exit_code: int | None) -> str:
    """'exit 3' or 'killed by SIGKILL' for a subprocess return code."""
    if exit_code is None:
        return "-"
    if exit_code < 0:
        import signal  # noqa: PLC0415

        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit {exit_code}"
