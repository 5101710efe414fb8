"""The options the commands share, as Typer annotations, and the checks and look-ups behind
them: storage options from JSON, the numbers `run` takes, the store a command names.
"""

from __future__ import annotations

import enum
import json
import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from batchrun._identity import RunIdentity
from batchrun._logging import LogFormat
from batchrun.command import CommandTemplate
from batchrun.errors import BadInputError, EvalSetError, ProgressLocationError
from batchrun.evalset import EvalSet, load_eval_set
from batchrun.location import default_state_root, resolve_location
from batchrun.plan import StateConfig
from batchrun.progress import ProgressStore

MIN_STATE_SYNC_S = 0.1


class StopSignal(enum.StrEnum):
    """--stop-signal values."""

    TERM = "TERM"
    INT = "INT"
    HUP = "HUP"
    QUIT = "QUIT"
    USR1 = "USR1"
    USR2 = "USR2"


def parse_stop_signal(text: str) -> signal.Signals:
    """A --stop-signal value in any case, with or without SIG (``int``, ``SIGINT``, ``INT``)."""
    name = text.strip().upper().removeprefix("SIG")
    if name not in StopSignal.__members__:
        valid = ", ".join(StopSignal.__members__)
        msg = f"--stop-signal {text!r} is not a signal batchrun sends; give one of {valid} (any case, SIG optional)"
        raise BadInputError(msg)
    return signal.Signals[f"SIG{name}"]


def parse_log_format(text: str) -> LogFormat:
    """A --log-format value in any case."""
    try:
        return LogFormat(text.strip().lower())
    except ValueError:
        valid = ", ".join(f.value for f in LogFormat)
        msg = f"--log-format {text!r} is not a log format; give one of {valid}"
        raise BadInputError(msg) from None


# MODEL and EVAL_SET of the reading commands: optional where --progress alone names the run.
OptionalModelArg = Annotated[str | None, typer.Argument(metavar="MODEL", help="Model name (optional with --progress).")]
OptionalSetArg = Annotated[str | None, typer.Argument(metavar="EVAL_SET", help="Eval set (optional with --progress).")]
ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Model name.")]
SetArg = Annotated[str, typer.Argument(metavar="EVAL_SET", help="Eval set (with --progress, any name).")]
ProgressOpt = Annotated[
    str | None,
    typer.Option(
        "--progress",
        envvar="BATCHRUN_PROGRESS",
        help="Progress file URI (local path, s3://..., any fsspec URL); a trailing / names a folder. "
        "Default {model}.{eval_set}.progress.txt in $XDG_STATE_HOME/batchrun/ if set, else /tmp/batchrun-UID/ "
        "($TMPDIR instead of /tmp when set).",
        show_default=False,
    ),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage-options",
        envvar="BATCHRUN_STORAGE_OPTIONS",
        help='fsspec storage options as JSON, e.g. \'{"client_kwargs": {"endpoint_url": "http://..."}}\'.',
        show_default=False,
    ),
]
RegistryOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--registry-path",
        envvar="BATCHRUN_REGISTRY_PATH",
        help="Folder with eval_sets/*.yaml to look set names up in (repeatable).",
        show_default=False,
    ),
]
StateOpt = Annotated[
    bool,
    typer.Option(
        "--state",
        # Not BATCHRUN_STATE: that name is what every eval receives (its state folder).
        envvar="BATCHRUN_USE_STATE",
        help="Give every eval a state folder ($BATCHRUN_STATE), as a command using {state} has.",
    ),
]
StateRootOpt = Annotated[
    str | None,
    typer.Option(
        "--state-root",
        envvar="BATCHRUN_STATE_ROOT",
        help="Local folder for evals' state folders (on Kubernetes the pod's emptyDir). "
        "Default /tmp/batchrun-UID/state ($TMPDIR instead of /tmp when set).",
        show_default=False,
    ),
]
StateSyncOpt = Annotated[
    float,
    typer.Option(
        "--state-sync", envvar="BATCHRUN_STATE_SYNC", help="Seconds between syncs of a running eval's state folder."
    ),
]
FinalSyncOpt = Annotated[
    float,
    typer.Option(
        "--final-sync-timeout",
        envvar="BATCHRUN_FINAL_SYNC_TIMEOUT",
        help="During a stop, seconds a stopped eval's last state sync may take before batchrun exits.",
    ),
]
KeepStateOpt = Annotated[
    bool,
    typer.Option(
        "--keep-state",
        envvar="BATCHRUN_KEEP_STATE",
        help="With --retry-failed: start failed evals from their stored state, not an empty folder.",
    ),
]
LogFormatOpt = Annotated[
    str,
    typer.Option(
        "--log-format", envvar="BATCHRUN_LOG_FORMAT", help="Log lines as JSON or for a terminal: auto, json, console."
    ),
]


def parse_storage_options(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        msg = f"--storage-options is not valid JSON: {exc}"
        raise ProgressLocationError(msg) from None
    if not isinstance(options, dict):
        msg = "--storage-options must be a JSON object"
        raise ProgressLocationError(msg)
    return options


def check_numbers(*, jobs: int, max_attempts: int, retry_backoff: float, grace: float, timeout: float | None) -> None:
    problems = [
        (jobs < 1, f"--jobs must be at least 1, got {jobs}"),
        (max_attempts < 1, f"--max-attempts must be at least 1, got {max_attempts}"),
        (not math.isfinite(retry_backoff), f"--retry-backoff must be a finite number, got {retry_backoff}"),
        (retry_backoff < 0, f"--retry-backoff can't be negative, got {retry_backoff:g}"),
        (not math.isfinite(grace), f"--grace must be a finite number, got {grace}"),
        (grace < 0, f"--grace can't be negative, got {grace:g}"),
        (timeout is not None and not math.isfinite(timeout), f"--eval-timeout must be a finite number, got {timeout}"),
        (timeout is not None and timeout <= 0, f"--eval-timeout must be positive, got {timeout}"),
    ]
    for bad, msg in problems:
        if bad:
            raise BadInputError(msg)


def state_config(  # noqa: PLR0913 - one parameter per option
    template: CommandTemplate, *, wanted: bool, root: str | None, interval: float, keep: bool, final: float
) -> StateConfig | None:
    """The run's state settings, or None when no eval gets a state folder (no ``{state}``, no --state)."""
    if not math.isfinite(interval) or interval < MIN_STATE_SYNC_S:
        msg = f"--state-sync must be a number of seconds of at least {MIN_STATE_SYNC_S:g}, got {interval:g}"
        raise BadInputError(msg)
    if not math.isfinite(final) or final < 0:
        msg = f"--final-sync-timeout must be a number of seconds of at least 0, got {final:g}"
        raise BadInputError(msg)
    if not (wanted or template.uses_state):
        return None
    if root is not None and not root.strip():
        msg = "--state-root is empty"
        raise BadInputError(msg)
    folder = str(Path(root).absolute()) if root else default_state_root()
    try:
        Path(folder).mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot use {folder} as the state root (--state-root): {exc.strerror or exc}"
        raise BadInputError(msg) from None
    return StateConfig(folder, interval, keep, final)


def locate(
    model: str | None, eval_set: str | None, progress: str | None, storage_options: str | None, registry: list[str]
) -> tuple[ProgressStore, EvalSet | None, str | None]:
    """The store that MODEL/EVAL_SET/--progress name, and the eval set where it can be loaded."""
    options = parse_storage_options(storage_options)
    if eval_set is None and progress is None:
        msg = "give MODEL and EVAL_SET, or --progress"
        raise BadInputError(msg)
    evals: EvalSet | None = None
    set_name = eval_set
    if eval_set is not None:
        try:
            evals = load_eval_set(eval_set, registry)
            set_name = evals.name
        except EvalSetError:
            if progress is None and ("/" in eval_set or "#" in eval_set):
                raise
    location = resolve_location(progress, model=model or "", eval_set=set_name or "")
    return ProgressStore.open(location, options), evals, set_name


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run a reading command names: its store, its evals, and whether anything is stored yet."""

    store: ProgressStore
    names: tuple[str, ...]  # the set's evals, else the stored run's (empty when neither is known)
    set_name: str | None
    identity: RunIdentity | None
    stored: bool


def locate_run(
    model: str | None, eval_set: str | None, progress: str | None, storage_options: str | None, registry: list[str]
) -> StoredRun:
    """The run that MODEL/EVAL_SET/--progress name; BadInputError when there is neither an eval
    set to list nor anything stored.
    """
    store, evals, set_name = locate(model, eval_set, progress, storage_options, registry)
    identity = store.identity()
    stored = identity is not None or store.exists()
    if evals is None and not stored:
        msg = f"no batchrun progress at {store.location.uri}"
        raise BadInputError(msg)
    names = evals.evals if evals is not None else (identity.evals if identity is not None else ())
    return StoredRun(store, names, set_name, identity, stored)
