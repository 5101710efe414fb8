"""batchrun: run eval sets resumably, with progress on local disk or in S3.

The command line lives in :mod:`batchrun.cli`; this module is the typed core it sits on.
"""

from __future__ import annotations

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
