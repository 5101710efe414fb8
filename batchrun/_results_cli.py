"""The commands that read what evals left behind: `pull` (their files, to a local folder) and
`report` (one row per eval, with the headline metrics read from its results).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from batchrun import errors
from batchrun._options import ModelArg, ProgressOpt, RegistryOpt, SetArg, StorageOpt, StoredRun, locate_run
from batchrun._state import Attempt, EvalState, Outcome, RunState
from batchrun.errors import BadInputError
from batchrun.report import Metrics, Row, read_metrics, render_csv, render_json, render_table
from batchrun.results import local_name, pull_files, source

_REPORTED = (".eval", ".jsonl", ".json")  # what the report's readers look at; nothing else is downloaded


def pull(  # noqa: PLR0913 - one parameter per documented option
    model: ModelArg,
    eval_set: SetArg,
    eval_name: Annotated[
        str | None, typer.Argument(metavar="EVAL", help="Only this eval (default: all).", show_default=False)
    ] = None,
    to: Annotated[str, typer.Option("--to", help="Local folder to download into (one sub-folder per eval).")] = ".",
    unfinished: Annotated[
        bool, typer.Option("--state", help="Also the synced state of evals not completed (yet).")
    ] = False,
    progress: ProgressOpt = None,
    storage_options: StorageOpt = None,
    registry_path: RegistryOpt = None,
) -> None:
    """Download evals' results (the state folder of the attempt that completed) to --to DIR/EVAL/,
    e.g. for `inspect view --log-dir DIR`.
    """
    run, names, state = _open(model, eval_set, progress, storage_options, registry_path)
    store = run.store
    if eval_name is not None:
        names = (eval_name,)
    pulled = files = size = 0
    for name in names:
        found = source(store, state, name, unfinished=unfinished)
        if found is None:
            continue
        target = str(Path(to) / local_name(name))
        try:
            count, bytes_ = pull_files(store, found, target)
        except OSError as exc:
            msg = f"cannot write into {target} (--to): {exc.strerror or exc}"
            raise BadInputError(msg) from None
        if not count:
            continue  # completed without {state} (or with an empty folder): nothing was kept
        if found.kind == "state":
            typer.echo(f"{name}: {count} files of the state of attempt {found.attempt} (not completed) -> {target}")
        else:
            typer.echo(f"{name}: {count} files -> {target}")
        pulled, files, size = pulled + 1, files + count, size + bytes_
    if not pulled:
        what = f"eval {eval_name!r}" if eval_name is not None else "any eval"
        hint = "" if unfinished else "; --state pulls the state of evals not completed"
        msg = f"no results stored for {what} at {store.location.uri}{hint}"
        raise BadInputError(msg)
    typer.echo(f"pulled {files} files ({size} bytes) of {pulled} evals to {to}")


_NO_RESULTS = (
    "no results stored for any eval: an eval keeps results when it has a state folder "
    "({state} in --command, or --state) and writes its logs or metrics there"
)


def report(  # noqa: PLR0913 - one parameter per documented option
    model: ModelArg,
    eval_set: SetArg,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV, one row per eval, one column per metric.")] = False,
    progress: ProgressOpt = None,
    storage_options: StorageOpt = None,
    registry_path: RegistryOpt = None,
) -> None:
    """One row per eval: state, attempts, duration, and the headline metrics of its results
    (inspect-ai logs, an oaieval record file, or a metrics.json).
    """
    if as_json and as_csv:
        msg = "give --json or --csv, not both"
        raise BadInputError(msg)
    run, names, state = _open(model, eval_set, progress, storage_options, registry_path)
    store, stored = run.store, run.stored
    set_name = run.identity.eval_set if run.identity is not None else run.set_name or eval_set  # as the run stored it
    if not stored and not (as_json or as_csv):
        typer.echo(f"no progress stored at {store.location.uri} (the {len(names)} evals of the set have not run)")
        raise typer.Exit(errors.EXIT_EVAL_FAILED)  # as `status` says it; --json and --csv give pending rows
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="batchrun-report-") as tmp:
        for index, name in enumerate(names):
            found = source(store, state, name, unfinished=False)
            metrics = None
            if found is not None:
                folder = Path(tmp) / str(index)
                pull_files(store, found, str(folder), suffixes=_REPORTED)
                metrics = read_metrics(folder)
            rows.append(_row(state, name, metrics))
    if not (as_json or as_csv):  # the table's first line says which run, as status's does
        typer.echo(f"{model} / {set_name}  ({store.location.uri})")
    render = render_json if as_json else render_csv if as_csv else render_table
    typer.echo(render(rows).rstrip("\n"))
    if not as_json and not as_csv and rows and all(row.metrics is None for row in rows) and state.completed_order():
        typer.echo(_NO_RESULTS, err=True)


def _open(
    model: str, eval_set: str, progress: str | None, storage_options: str | None, registry: list[str] | None
) -> tuple[StoredRun, tuple[str, ...], RunState]:
    run = locate_run(model, eval_set, progress, storage_options, registry or [])
    state = run.store.load()
    return run, run.names or tuple(sorted(state.attempts)), state


def _row(state: RunState, name: str, metrics: Metrics | None) -> Row:
    attempts = state.of(name)
    ended = [a for a in attempts if a.ended_at is not None]
    done = [a for a in ended if a.outcome is Outcome.COMPLETED]
    last: Attempt | None = (done or ended)[-1] if done or ended else None
    settled = state.state(name) in {EvalState.DONE, EvalState.FAILED}  # a pending eval's last try says little
    duration = (
        None if last is None or last.ended_at is None or not settled else round(last.ended_at - last.started_at, 3)
    )
    return Row(
        eval=name,
        state=str(state.state(name)),
        attempts=sum(1 for a in attempts if a.counts),
        duration_s=duration,
        metrics=metrics,
    )
