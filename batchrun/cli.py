"""The command line: parses options (each also read from BATCHRUN_<OPTION>), calls the core,
and turns BatchrunError into one line on stderr and the error's exit code.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import structlog
import typer
from typer.exceptions import TyperException

from batchrun import _help, errors
from batchrun._cli_errors import crashed, fail, usage_message
from batchrun._console import Console
from batchrun._help import EXAMPLES, SHORT
from batchrun._identity import RunIdentity
from batchrun._logging import configure_logging
from batchrun._options import (
    FinalSyncOpt,
    KeepStateOpt,
    LogFormatOpt,
    ProgressOpt,
    RegistryOpt,
    StateOpt,
    StateRootOpt,
    StateSyncOpt,
    StorageOpt,
    check_numbers,
    parse_log_format,
    parse_stop_signal,
    parse_storage_options,
    state_config,
)
from batchrun._results_cli import pull, report
from batchrun._signals import StopRequest, reset_inherited_signals
from batchrun._store_cli import logs, reset, status
from batchrun.command import DEFAULT_COMMAND, CommandTemplate
from batchrun.errors import BadInputError, BatchrunError, StoppedError
from batchrun.evalset import load_eval_set
from batchrun.fleet import HEARTBEAT_S, WORKER_TIMEOUT_S, check_timing, check_worker_id, default_worker_id
from batchrun.location import resolve_location
from batchrun.plan import RunPlan
from batchrun.progress import ProgressStore
from batchrun.runner import Runner

# The words after `--` on the command line (set by main(); None when the app is run another way):
# extra args reach the eval's command only from there, so a stray word is an error, not an argument.
_after_dashes: tuple[str, ...] | None = None


def check_extra_args(extra: tuple[str, ...]) -> None:
    """Refuse extra args that were not given after ``--`` (`run m set.yaml true`, `--fresh true`)."""
    if _after_dashes is None or extra == _after_dashes:
        return
    msg = f"unexpected argument {extra[0]!r}: run takes MODEL and EVAL_SET; extra args for the evals go after --"
    raise BadInputError(msg)


_help.install()
app = typer.Typer(
    name="batchrun",
    help="Run eval sets resumably; progress lives on local disk or in S3.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: it wraps where rich's tables cut defaults and env vars off
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # noqa: PLC0415 - only for --version

        typer.echo(f"batchrun {version('batchrun')}")
        raise typer.Exit


@app.callback()
def _options(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Run eval sets resumably; progress lives on local disk or in S3."""


@app.command(epilog=EXAMPLES["run"], short_help=SHORT["run"])
def run(  # noqa: PLR0913 - one parameter per documented option
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name, passed to the command as {model}.")],
    eval_set: Annotated[
        str, typer.Argument(metavar="EVAL_SET", help="Eval-set file or URL (FILE#SET picks a set), or a set name.")
    ],
    extra_args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="EXTRA_ARGS", help="Appended to every eval's command; give them after --.", show_default=False
        ),
    ] = None,
    command: Annotated[
        str,
        typer.Option(
            "--command",
            envvar="BATCHRUN_COMMAND",
            help="Command for one eval; placeholders {model} {eval} {eval_set} {attempt} {state}. Run without a shell.",
        ),
    ] = DEFAULT_COMMAND,
    progress: ProgressOpt = None,
    storage_options: StorageOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", envvar="BATCHRUN_JOBS", help="Evals run at once.")] = 1,
    fresh: Annotated[
        bool, typer.Option("--fresh", envvar="BATCHRUN_FRESH", help="Forget this run's earlier progress first.")
    ] = False,
    registry_path: RegistryOpt = None,
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts",
            envvar="BATCHRUN_MAX_ATTEMPTS",
            help="Failed attempts per eval in all, across pods, before it is recorded as failed.",
        ),
    ] = 3,
    max_lost: Annotated[
        int,
        typer.Option(
            "--max-lost",
            envvar="BATCHRUN_MAX_LOST",
            help="Pod deaths during an eval running alone before it is recorded as failed (crash loops).",
        ),
    ] = 3,
    retry_backoff: Annotated[
        float,
        typer.Option(
            "--retry-backoff",
            envvar="BATCHRUN_RETRY_BACKOFF",
            help="Seconds before the first retry; doubles per attempt, with jitter, up to 5 minutes.",
        ),
    ] = 5.0,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed", envvar="BATCHRUN_RETRY_FAILED", help="Give evals recorded as failed new attempts."
        ),
    ] = False,
    fail_fast: Annotated[
        bool,
        typer.Option(
            "--fail-fast/--no-fail-fast",
            envvar="BATCHRUN_FAIL_FAST",
            help="Stop the run when the first attempts of 3 evals all fail within 1 s the same way "
            "(one exit code, one last line), instead of retrying every eval with backoff.",
        ),
    ] = True,
    eval_timeout: Annotated[
        float | None,
        typer.Option(
            "--eval-timeout",
            envvar="BATCHRUN_EVAL_TIMEOUT",
            help="Stop an attempt that runs longer than this many seconds; it counts as failed.",
            show_default=False,
        ),
    ] = None,
    stop_signal: Annotated[
        str,
        typer.Option(
            "--stop-signal",
            envvar="BATCHRUN_STOP_SIGNAL",
            help="Signal sent to running evals when batchrun stops: TERM, INT, HUP, QUIT, USR1 or USR2, "
            "any case, SIG optional (INT lets some tools save partial work).",
        ),
    ] = "TERM",
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            envvar="BATCHRUN_GRACE",
            help="Seconds running evals get to exit after the stop signal before they are killed.",
        ),
    ] = 10.0,
    worker_id: Annotated[
        str | None,
        typer.Option(
            "--worker-id",
            envvar="BATCHRUN_WORKER_ID",
            help="This process's name among the workers of a run. A process started with an id in use "
            "takes it over at once. Default: JOB_NAME-JOB_COMPLETION_INDEX in an Indexed Job, "
            "else the host name plus a random suffix.",
            show_default=False,
        ),
    ] = None,
    heartbeat: Annotated[
        float,
        typer.Option(
            "--heartbeat", envvar="BATCHRUN_HEARTBEAT", help="Seconds between this worker's heartbeats in the store."
        ),
    ] = HEARTBEAT_S,
    worker_timeout: Annotated[
        float,
        typer.Option(
            "--worker-timeout",
            envvar="BATCHRUN_WORKER_TIMEOUT",
            help="Seconds without a heartbeat after which another worker takes a worker's evals.",
        ),
    ] = WORKER_TIMEOUT_S,
    state: StateOpt = False,
    state_root: StateRootOpt = None,
    state_sync: StateSyncOpt = 30.0,
    keep_state: KeepStateOpt = False,
    final_sync_timeout: FinalSyncOpt = 20.0,
    log_format: LogFormatOpt = "auto",
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", envvar="BATCHRUN_VERBOSE", help="Readable log lines in full: UTC times, each argv."
        ),
    ] = False,
) -> None:
    """Run every eval of EVAL_SET not yet recorded as completed, then exit. Any number of processes
    started on one progress store share its evals.
    """
    stop = StopRequest()
    # From here on a stop signal ends start-up at once (StoppedError), then stops the runner in order.
    stop.install(raising=True)
    console = Console()
    configure_logging(console, parse_log_format(log_format), terminal=sys.stderr.isatty(), verbose=verbose)
    check_extra_args(tuple(extra_args or ()))
    signum = parse_stop_signal(stop_signal)
    if max_lost < 1:
        raise BadInputError(f"--max-lost must be at least 1, got {max_lost}")
    check_numbers(jobs=jobs, max_attempts=max_attempts, retry_backoff=retry_backoff, grace=grace, timeout=eval_timeout)
    check_timing(heartbeat, worker_timeout)
    worker = check_worker_id(default_worker_id() if worker_id is None else worker_id)
    template = CommandTemplate.parse(command, tuple(extra_args or ()))
    states = state_config(
        template, wanted=state, root=state_root, interval=state_sync, keep=keep_state, final=final_sync_timeout
    )
    options = parse_storage_options(storage_options)
    evals = load_eval_set(eval_set, registry_path or ())
    template.check_eval_names(evals.evals)
    template.check_program(model=model, evals=evals.evals, eval_set=evals.name)
    location = resolve_location(progress, model=model, eval_set=evals.name)
    store = ProgressStore.open(location, options)
    store.check_importable()  # a file there that is not a progress file is neither imported nor reset
    if fresh:
        store.reset()
    changed = store.claim(RunIdentity(model, evals.name, template.text, template.extra_args, evals.evals))
    if changed is not None:  # allowed while no eval has completed: nothing would be mixed up
        log = structlog.get_logger("batchrun").bind(model=model, eval_set=evals.name, progress=location.uri)
        log.warning("run.command_changed", change=changed)
    plan = RunPlan(
        model,
        evals,
        template,
        jobs=jobs,
        max_attempts=max_attempts,
        max_lost=max_lost,
        retry_backoff=retry_backoff,
        retry_failed=retry_failed,
        eval_timeout=eval_timeout,
        stop_signal=signum,
        grace=grace,
        worker_id=worker,
        heartbeat=heartbeat,
        worker_timeout=worker_timeout,
        state=states,
        fail_fast=fail_fast,
        fresh=fresh,
    )
    summary = Runner(plan, store, console, stop).run()
    raise typer.Exit(summary.exit_code)


for _command in (status, reset, logs, pull, report):
    app.command(epilog=EXAMPLES[_command.__name__], short_help=SHORT[_command.__name__])(_command)


def main() -> None:
    """Console-script entry point: every error becomes one line on stderr and its exit code."""
    global _after_dashes  # noqa: PLW0603 - what the command line said, for check_extra_args
    reset_inherited_signals()
    argv = sys.argv[1:]
    _after_dashes = tuple(argv[argv.index("--") + 1 :]) if "--" in argv else ()
    try:
        result = app(prog_name="batchrun", standalone_mode=False)
    except BatchrunError as exc:
        fail(str(exc), exc.exit_code)
    except StoppedError as exc:  # a stop signal during start-up (a BaseException, like KeyboardInterrupt)
        fail(str(exc), exc.exit_code)
    except TyperException as exc:  # usage errors found by the parser: unknown option, missing argument
        fail(usage_message(exc), exc.exit_code)
    except typer.Abort:  # Ctrl-C or end of input at a prompt: end the prompt's line first
        with contextlib.suppress(OSError):
            typer.echo("", err=True)
        fail("aborted, nothing deleted", errors.EXIT_SIGINT)
    except Exception as exc:  # a bug: not BaseException, so KeyboardInterrupt and SystemExit pass  # noqa: BLE001
        crashed(exc)
    raise SystemExit(result if isinstance(result, int) else errors.EXIT_OK)
