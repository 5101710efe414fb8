"""The commands that read or clear a run's progress: `status`, `reset` and `logs`."""

from __future__ import annotations

import math
import sys
from typing import Annotated

import typer

from batchrun import errors
from batchrun._options import (
    OptionalModelArg,
    OptionalSetArg,
    ProgressOpt,
    RegistryOpt,
    StorageOpt,
    locate,
    locate_run,
)
from batchrun._state import Attempt
from batchrun.errors import BadInputError, BatchrunError
from batchrun.status import Frames, build_report, dumps, watch

_NAMES_SHOWN = 5  # of the set's evals, when an eval is not in it


def status(  # noqa: PLR0913
    model: OptionalModelArg = None,
    eval_set: OptionalSetArg = None,
    progress: ProgressOpt = None,
    storage_options: StorageOpt = None,
    registry_path: RegistryOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", envvar="BATCHRUN_JSON", help="One JSON object instead of a table.")
    ] = False,
    watch_: Annotated[
        bool, typer.Option("--watch", "-w", help="Redraw every --interval seconds until Ctrl-C.")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between redraws with --watch.")] = 2.0,
) -> None:
    """Show each eval's state (done, failed, running, pending) and attempts, and the workers."""
    if watch_ and not 0 < interval < math.inf:
        msg = f"--interval must be a positive number of seconds, got {interval:g}"
        raise BadInputError(msg)
    run = locate_run(model, eval_set, progress, storage_options, registry_path or [])
    store, names, set_name, identity = run.store, run.names, run.set_name, run.identity
    if not run.stored and not watch_ and not as_json:
        typer.echo(f"no progress stored at {store.location.uri} (the {len(names)} evals of the set have not run)")
        raise typer.Exit(errors.EXIT_EVAL_FAILED)  # as for a run not done; --json gives the zeros

    def frame() -> str:
        workers = store.workers()  # before the records: an attempt that ends meanwhile is not taken for lost
        state = store.load()
        report = build_report(
            model or (identity.model if identity else "?"),
            set_name or (identity.eval_set if identity else "?"),
            store.location.uri,
            names or tuple(sorted(state.attempts)),
            state,
            workers=workers,
        )
        return dumps(report) if as_json else report.to_text()

    if not watch_:
        typer.echo(frame())
        return
    style = Frames.LINES if as_json else (Frames.SCREEN if sys.stdout.isatty() else Frames.BLOCKS)
    watch(frame, interval=interval, style=style)


def reset(  # noqa: PLR0913
    model: OptionalModelArg = None,
    eval_set: OptionalSetArg = None,
    progress: ProgressOpt = None,
    storage_options: StorageOpt = None,
    registry_path: RegistryOpt = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", envvar="BATCHRUN_YES", help="Don't ask for confirmation.")
    ] = False,
) -> None:
    """Delete this run's progress (asks first unless --yes)."""
    store, _, _ = locate(model, eval_set, progress, storage_options, registry_path or [])
    uri = store.location.uri
    if not store.exists():
        typer.echo(f"nothing stored at {uri}")
        return
    store.check_importable()  # never delete a file that is not a progress file
    if not yes:
        if not sys.stdin.isatty():
            msg = f"refusing to delete {uri} without --yes (no terminal to confirm on)"
            raise BadInputError(msg)
        try:
            done = len(store.load().completed_order())
            what = f"{done} completed eval{'' if done == 1 else 's'}, with all logs, state and results"
        except BatchrunError as exc:  # a damaged store is what a reset gets one out of: ask anyway
            what = f"its records can't be read: {exc}"
        if not typer.confirm(f"Delete all progress at {uri} ({what})?"):
            typer.echo("nothing deleted")
            raise typer.Exit(errors.EXIT_EVAL_FAILED)
    store.reset()
    typer.echo(f"deleted progress at {uri}")


def logs(  # noqa: PLR0913
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name.")],
    eval_set: Annotated[
        str, typer.Argument(metavar="EVAL_SET", help="Eval set (file, URL or name; with --progress, any name).")
    ],
    eval_name: Annotated[str, typer.Argument(metavar="EVAL", help="The eval whose output to print.")],
    attempt: Annotated[
        int | None,
        # No BATCHRUN_ATTEMPT env var here: that name is what every eval receives.
        typer.Option("--attempt", help="Attempt number (default: the latest).", show_default=False),
    ] = None,
    progress: ProgressOpt = None,
    storage_options: StorageOpt = None,
    registry_path: RegistryOpt = None,
) -> None:
    """Print the saved output of one attempt of an eval, even from a pod that is gone."""
    run = locate_run(model, eval_set, progress, storage_options, registry_path or [])
    store, uri = run.store, run.store.location.uri
    records = store.load().of(eval_name) if run.stored else []
    if run.names and eval_name not in run.names and not records:  # (an eval since taken out of the set has some)
        shown = ", ".join(run.names[:_NAMES_SHOWN]) + (", ..." if len(run.names) > _NAMES_SHOWN else "")
        msg = f"eval {eval_name!r} is not in the set ({len(run.names)} evals: {shown})"
        raise BadInputError(msg)
    if not run.stored:
        msg = f"no progress stored at {uri} (the {len(run.names)} evals of the set have not run)"
        raise BadInputError(msg)
    ended = {a.number: a for a in records if a.ended_at is not None}
    numbers = store.logged_attempts(eval_name)
    if attempt is None:
        if not ended and not numbers:
            msg = f"eval {eval_name!r} has no ended attempt yet at {uri}"
            raise BadInputError(msg)
        attempt = max([*ended, *numbers])
    output = store.read_log(eval_name, attempt)
    record = ended.get(attempt)
    if output is None and record is not None and not record.tail and record.reason != "lost":
        typer.echo(f"(attempt {attempt} of eval {eval_name!r} printed nothing)", err=True)  # nothing to show
        return
    if output is None:
        have = ", ".join(map(str, sorted({*ended, *numbers}))) or "none"
        why = f" (it {_how(record)})" if record is not None else ""
        msg = f"no output saved for attempt {attempt} of eval {eval_name!r}{why}; ended attempts: {have}"
        raise BadInputError(msg)
    sys.stdout.buffer.write(output)
    sys.stdout.flush()


def _how(record: Attempt) -> str:
    if record.reason == "lost":
        return "was lost with its pod"
    return "printed output, but saving it failed"
