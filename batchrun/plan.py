"""What a `run` is asked to do (RunPlan), and how it ended (RunSummary)."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from batchrun.command import CommandTemplate
from batchrun.errors import EXIT_EVAL_FAILED, EXIT_OK
from batchrun.evalset import EvalSet
from batchrun.fleet import HEARTBEAT_S, WORKER_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where evals' local state folders live, how often they sync, whether a new round keeps state."""

    root: str
    interval: float = 30.0
    keep: bool = False  # --keep-state: a --retry-failed round restores the failed round's state
    final_timeout: float = 20.0  # during a stop, how long an eval's last sync may take


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything `run` needs to know besides where progress lives."""

    model: str
    eval_set: EvalSet
    template: CommandTemplate
    jobs: int = 1
    max_attempts: int = 3
    max_lost: int = 3
    retry_backoff: float = 5.0
    retry_failed: bool = False
    eval_timeout: float | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    grace: float = 10.0
    worker_id: str | None = None  # None: fleet.default_worker_id()
    heartbeat: float = HEARTBEAT_S
    worker_timeout: float = WORKER_TIMEOUT_S
    state: StateConfig | None = None  # None: no eval has a state folder
    fail_fast: bool = True  # stop when the first attempts of several evals fail fast alike
    fresh: bool = False  # the run began by forgetting earlier progress (so rerunning it would too)


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
