"""The one error hierarchy of batchrun; every error carries the exit code it ends the process with.

    BatchrunError               exit 1
    ├── BadInputError           exit 2: usage or bad input; nothing was run or written
    │   ├── EvalSetError            the eval set can't be read or is invalid
    │   ├── CommandTemplateError    --command has an unknown placeholder or bad quoting
    │   ├── ProgressLocationError   the progress URI or storage options are malformed
    │   └── RunIdentityError        the progress store belongs to another run
    ├── StoreError              exit 3: the progress store can't be reached or written
    │   └── ConflictError           a conditional write lost a race (retried internally)
    │       └── AttemptTakenError   another writer claimed this attempt number first
    └── FencedError             exit 75: another process took this worker's place (same
                                --worker-id, or it was declared dead); it stopped and wrote nothing more

    StoppedError                exit 128 + the signal: stopped during start-up (a BaseException)
    (any other exception)       exit 70 (EX_SOFTWARE): a bug in batchrun; one line on stderr,
                                the traceback in the `run.crashed` log event

Lower-level errors (OSError, botocore, YAML) are translated into these where they are raised,
so the command line prints one line and exits with the class's code.
"""

from __future__ import annotations

import signal
from typing import ClassVar

EXIT_OK = 0
EXIT_EVAL_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STORE = 3
EXIT_FENCED = 75  # EX_TEMPFAIL: superseded by another process with this worker id; the podFailurePolicy ignores it
EXIT_INTERNAL = 70  # EX_SOFTWARE: an unexpected exception, a bug; counts toward the Job's backoffLimit
EXIT_SIGINT = 130  # 128 + SIGINT: stopped by Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM: stopped by Kubernetes (spot reclaim, eviction, deletion)


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""

    exit_code: ClassVar[int] = EXIT_EVAL_FAILED


class StoppedEarlyError(BatchrunError):
    """The first attempts of several evals failed fast the same way (fail-fast); exit 1."""


class BadInputError(BatchrunError):
    """Usage or input that can't work; raised before anything runs or is written."""

    exit_code: ClassVar[int] = EXIT_BAD_INPUT


class EvalSetError(BadInputError):
    """The eval set is missing, unreadable, malformed, empty or names an invalid eval."""


class CommandTemplateError(BadInputError):
    """The --command template can't be parsed or uses an unknown placeholder."""


class ProgressLocationError(BadInputError):
    """The progress URI or the storage options are malformed."""


class RunIdentityError(BadInputError):
    """The progress store holds another run (other model, set, command or extra args)."""


class StoreError(BatchrunError):
    """The progress store could not be reached, read or written after retries."""

    exit_code: ClassVar[int] = EXIT_STORE


class ConflictError(StoreError):
    """A conditional write found the object changed since it was read."""


class AttemptTakenError(ConflictError):
    """Another writer claimed this attempt number of this eval first (create-only claim)."""

    def __init__(self, message: str, *, worker: str = "", writer: str = "") -> None:
        """Name the claim's holder, as its claim object says (empty if it could not be read)."""
        super().__init__(message)
        self.worker = worker
        self.writer = writer


class FencedError(BatchrunError):
    """Another process took this worker's place in the fleet: a newer process took its worker id over, or other
    workers found its heartbeat stalled and declared it dead. It stops its evals (interrupted, not
    failed), writes nothing more, and exits 75, which the Job's podFailurePolicy ignores.
    """

    exit_code: ClassVar[int] = EXIT_FENCED


class StoppedError(BaseException):
    """A stop signal (SIGTERM, SIGINT, SIGHUP) arrived during start-up, before any eval ran: the
    process exits 128 + its number. Like KeyboardInterrupt it is a BaseException, so that the
    ``except Exception`` of retry loops and libraries (fsspec, botocore) lets it through.
    """

    def __init__(self, signum: int) -> None:
        """Name the signal in the one-line message."""
        super().__init__(f"stopped by {signal.Signals(signum).name} during start-up, before any eval ran")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended."""
        return 128 + self.signum
