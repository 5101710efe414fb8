"""batchrun: run eval sets resumably, with progress on local disk or in S3.

The command line lives in :mod:`batchrun.cli`; this module is the typed core it sits on.
"""

# The imports below come after structlog is imported without rich (on the command line only).
# ruff: noqa: E402

from __future__ import annotations

import sys


def _command_line() -> bool:
    """Whether this process is batchrun's command line (the console script, `python -m batchrun`)."""
    argv = sys.orig_argv
    return sys.argv[0].rpartition("/")[2] == "batchrun" or any(
        word == "-m" and argv[i + 1 : i + 2] in (["batchrun"], ["batchrun.cli"]) for i, word in enumerate(argv)
    )


if "structlog" not in sys.modules and "rich" not in sys.modules and _command_line():
    # Not a program that imports the package: structlog imports rich (about 40 ms of every
    # command's start-up) only to offer rich tracebacks, which batchrun never uses (_logging.py
    # passes plain_traceback), and typer's help here is plain (rich_markup_mode=None).
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401 - imported here, without rich
    finally:
        del sys.modules["rich"]

from batchrun._identity import RunIdentity
from batchrun._state import Attempt, EvalState, Outcome, RunState
from batchrun.command import CommandTemplate
from batchrun.errors import (
    BadInputError,
    BatchrunError,
    CommandTemplateError,
    ConflictError,
    EvalSetError,
    ProgressLocationError,
    RunIdentityError,
    StoreError,
)
from batchrun.evalset import EvalSet, load_eval_set
from batchrun.location import ProgressLocation, resolve_location
from batchrun.plan import RunPlan, RunSummary
from batchrun.progress import ProgressStore
from batchrun.runner import Runner

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "BadInputError",
    "BatchrunError",
    "CommandTemplate",
    "CommandTemplateError",
    "ConflictError",
    "EvalSet",
    "EvalSetError",
    "EvalState",
    "Outcome",
    "ProgressLocation",
    "ProgressLocationError",
    "ProgressStore",
    "RunIdentity",
    "RunIdentityError",
    "RunPlan",
    "RunState",
    "RunSummary",
    "Runner",
    "StoreError",
    "load_eval_set",
    "resolve_location",
]
