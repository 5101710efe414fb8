"""The command line: parses options (each also read from BATCHRUN_<OPTION>), calls the core,
and turns BatchrunError into one line on stderr and the error's exit code.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from batchrun import errors
from batchrun._console import Console
from batchrun._logging import LogFormat, configure_logging
from batchrun.command import DEFAULT_COMMAND, CommandTemplate
from batchrun.errors import BadInputError, BatchrunError, EvalSetError, ProgressLocationError
from batchrun.evalset import EvalSet, load_eval_set
from batchrun.progress import ProgressStore, RunIdentity, resolve_location
from batchrun.runner import Runner, RunPlan
from batchrun.status import build_report, dumps

app = typer.Typer(
    name="batchrun",
    help="Run eval sets resumably; progress lives on local disk or in S3.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])

ProgressOpt = Annotated[
    str | None,
    typer.Option(
        "--progress",
        envvar="BATCHRUN_PROGRESS",
        help="Progress file URI (local path, s3://..., any fsspec URL); a trailing / names a folder. "
        "Default /tmp/batchrun/{model}.{eval_set}.progress.txt.",
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
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option("--log-format", envvar="BATCHRUN_LOG_FORMAT", help="Log lines as JSON or for a terminal."),
]


def _fails_cleanly(func: F) -> F:
    """Print a BatchrunError as one line and exit with its code (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except BatchrunError as exc:
            typer.echo(f"batchrun: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _storage_options(text: str | None) -> dict[str, Any]:
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


@app.command()
@_fails_cleanly
def run(  # noqa: PLR0913 - one parameter per documented option
    model: Annotated[str, typer.Argument(help="Model name, passed to the command as {model}.")],
    eval_set: Annotated[str, typer.Argument(help="Eval-set file or URL (FILE#SET picks a set), or a set name.")],
    extra_args: Annotated[
        list[str] | None, typer.Argument(help="After --: appended to every eval's command.", show_default=False)
    ] = None,
    command: Annotated[
        str,
        typer.Option(
            "--command",
            envvar="BATCHRUN_COMMAND",
            help="Command for one eval; placeholders {model} {eval} {eval_set} {attempt}. Run without a shell.",
        ),
    ] = DEFAULT_COMMAND,
    progress: ProgressOpt = None,
    storage_options: StorageOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", envvar="BATCHRUN_JOBS", help="Evals run at once.")] = 1,
    fresh: Annotated[
        bool, typer.Option("--fresh", envvar="BATCHRUN_FRESH", help="Forget this run's earlier progress first.")
    ] = False,
    registry_path: RegistryOpt = None,
    log_format: LogFormatOpt = LogFormat.AUTO,
) -> None:
    """Run every eval of EVAL_SET not yet recorded as completed, then exit."""
    console = Console()
    configure_logging(console, log_format, terminal=sys.stderr.isatty())
    if jobs < 1:
        msg = f"--jobs must be at least 1, got {jobs}"
        raise BadInputError(msg)
    template = CommandTemplate.parse(command, tuple(extra_args or ()))
    options = _storage_options(storage_options)
    evals = load_eval_set(eval_set, registry_path or ())
    template.check_program(model=model, eval_name=evals.evals[0], eval_set=evals.name)
    location = resolve_location(progress, model=model, eval_set=evals.name)
    store = ProgressStore.open(location, options)
    if fresh:
        store.reset()
    store.claim(RunIdentity(model, evals.name, template.text, template.extra_args, evals.evals))
    summary = Runner(RunPlan(model, evals, template, jobs), store, console).run()
    raise typer.Exit(summary.exit_code)


def _locate(
    model: str | None, eval_set: str | None, progress: str | None, storage_options: str | None, registry: list[str]
) -> tuple[ProgressStore, EvalSet | None, str | None]:
    """The store that MODEL/EVAL_SET/--progress name, and the eval set where it can be loaded."""
    options = _storage_options(storage_options)
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


@app.command()
@_fails_cleanly
def status(  # noqa: PLR0913
    model: Annotated[str | None, typer.Argument(help="Model name (optional with --progress).")] = None,
    eval_set: Annotated[str | None, typer.Argument(help="Eval set (optional with --progress).")] = None,
    progress: ProgressOpt = None,
    storage_options: StorageOpt = None,
    registry_path: RegistryOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", envvar="BATCHRUN_JSON", help="One JSON object instead of a table.")
    ] = False,
) -> None:
    """Show each eval's state (done, failed, pending) and attempts."""
    store, evals, set_name = _locate(model, eval_set, progress, storage_options, registry_path or [])
    identity = store.identity()
    if evals is None and identity is None and not store.exists():
        msg = f"no batchrun progress at {store.location.uri}"
        raise BadInputError(msg)
    names = evals.evals if evals is not None else (identity.evals if identity is not None else ())
    state = store.load()
    if not names:
        names = tuple(sorted(state.attempts))
    report = build_report(
        model or (identity.model if identity else "?"),
        set_name or (identity.eval_set if identity else "?"),
        store.location.uri,
        names,
        state,
    )
    typer.echo(dumps(report) if as_json else report.to_text())


@app.command()
@_fails_cleanly
def reset(  # noqa: PLR0913
    model: Annotated[str | None, typer.Argument(help="Model name (optional with --progress).")] = None,
    eval_set: Annotated[str | None, typer.Argument(help="Eval set (optional with --progress).")] = None,
    progress: ProgressOpt = None,
    storage_options: StorageOpt = None,
    registry_path: RegistryOpt = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", envvar="BATCHRUN_YES", help="Don't ask for confirmation.")
    ] = False,
) -> None:
    """Delete this run's progress (asks first unless --yes)."""
    store, _, _ = _locate(model, eval_set, progress, storage_options, registry_path or [])
    uri = store.location.uri
    if not store.exists():
        typer.echo(f"nothing stored at {uri}")
        return
    if not yes:
        if not sys.stdin.isatty():
            msg = f"refusing to delete {uri} without --yes (no terminal to confirm on)"
            raise BadInputError(msg)
        if not typer.confirm(f"Delete all progress at {uri}?"):
            raise typer.Exit(errors.EXIT_BAD_INPUT)
    store.reset()
    typer.echo(f"deleted progress at {uri}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="batchrun")
