"""How help reads: plain text that wraps instead of cutting off (defaults and env var names in
full, at any width), usage lines that say ``MODEL EVAL_SET``, a value's name (``--jobs N``)
instead of its Python type (``<int>``), and `run`'s many options in groups. typer is pinned
(pyproject.toml): these adjust its 0.29 help formatting, and tests/test_help.py checks the result
at 80 and 120 columns.
"""

from __future__ import annotations

from typing import Any

from typer import core

# What an option's value is called in help, by its long name; flags show none.
METAVARS = {
    "--command": "TEMPLATE",
    "--progress": "URI",
    "--storage-options": "JSON",
    "--jobs": "N",
    "--registry-path": "DIR",
    "--max-attempts": "N",
    "--max-lost": "N",
    "--retry-backoff": "S",
    "--eval-timeout": "S",
    "--stop-signal": "SIGNAL",
    "--grace": "S",
    "--worker-id": "ID",
    "--heartbeat": "S",
    "--worker-timeout": "S",
    "--state-root": "DIR",
    "--state-sync": "S",
    "--final-sync-timeout": "S",
    "--log-format": "FORMAT",
    "--interval": "S",
    "--attempt": "N",
    "--to": "DIR",
}


# The group an option's help appears under, by its long name; the rest are under "Options".
GROUPS = {
    "Progress store": ("--progress", "--storage-options", "--fresh"),
    "Evals": ("--command", "--jobs", "--registry-path"),
    "Retries and stopping": (
        "--max-attempts",
        "--max-lost",
        "--retry-backoff",
        "--retry-failed",
        "--fail-fast",
        "--eval-timeout",
        "--stop-signal",
        "--grace",
    ),
    "State folders": ("--state", "--state-root", "--state-sync", "--final-sync-timeout", "--keep-state"),
    "Workers": ("--worker-id", "--heartbeat", "--worker-timeout"),
    "Output": ("--log-format", "--verbose"),
}
_GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}


def _group(param: Any) -> str:  # noqa: ANN401 - a click parameter
    return next((_GROUP_OF[opt] for opt in param.opts if opt in _GROUP_OF), "Options")


def _format_options(self: core.TyperCommand, ctx: Any, formatter: Any) -> None:  # noqa: ANN401 - click's types
    """Arguments, then options in their groups (in GROUPS' order), then the ungrouped ones (--help)."""
    arguments: list[tuple[str, str]] = []
    grouped: dict[str, list[tuple[str, str]]] = {name: [] for name in (*GROUPS, "Options")}
    for param in self.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            arguments.append(record)
        else:
            grouped[_group(param)].append(record)
    for title, records in (("Arguments", arguments), *grouped.items()):
        if records:
            with formatter.section(title):
                formatter.write_dl(records)


def _option_value_name(self: core.TyperOption, ctx: object) -> str | None:  # noqa: ARG001 - typer's signature
    if self.metavar is not None:
        return self.metavar
    long_name = next((opt for opt in self.opts if opt.startswith("--")), "")
    return METAVARS.get(long_name, "VALUE")


def _argument_type(self: core.TyperArgument, ctx: object) -> str | None:  # noqa: ARG001 - typer's signature
    return None  # the argument's name says it (MODEL, EVAL_SET)


def _argument_usage(self: core.TyperArgument) -> str:
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 else "")


def install() -> None:
    """Adjust typer's help formatting (idempotent)."""
    core.TyperOption.display_type_rich = _option_value_name  # type: ignore[method-assign]
    core.TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign,assignment]
    core.TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]  # noqa: SLF001
    core.TyperCommand.format_options = _format_options  # type: ignore[method-assign]


# The examples that end each command's help.
EXAMPLES = {
    "run": """Examples:

\b
  batchrun run demo examples/demo.yaml \\
    --command "python3 examples/demo_eval.py {model} {eval}"
  batchrun run gpt-4o-mini my-set --progress s3://bucket/progress/ --jobs 4
  batchrun run mockllm/model tasks.txt --stop-signal INT --command \\
    "inspect eval-set {eval} --model {model} --log-dir {state} --log-shared 5"
  batchrun run gpt-4o-mini my-set -- --max_samples 20""",
    "status": """Examples:

\b
  batchrun status gpt-4o-mini my-set
  batchrun status --json --progress s3://bucket/runs/m.my-set.progress.txt
  batchrun status gpt-4o-mini my-set --watch""",
    "reset": """Examples:

\b
  batchrun reset gpt-4o-mini my-set
  batchrun reset --yes --progress s3://bucket/runs/m.my-set.progress.txt""",
    "logs": """Examples:

\b
  batchrun logs gpt-4o-mini my-set test-match
  batchrun logs gpt-4o-mini my-set test-match --attempt 2""",
    "pull": """Examples:

\b
  batchrun pull mockllm/model tasks.txt --to logs
  inspect view --log-dir logs
  batchrun pull gpt-4o-mini my-set test-match --to out --state""",
    "report": """Examples:

\b
  batchrun report gpt-4o-mini my-set
  batchrun report gpt-4o-mini my-set --csv > results.csv""",
}


# Each command's line in `batchrun --help` (click cuts the docstring's first sentence at 45 characters).
SHORT = {
    "run": "Run the evals of a set not yet completed.",
    "status": "Show each eval's state, attempts and the workers.",
    "reset": "Delete a run's progress, state and results.",
    "logs": "Print the saved output of an eval's attempt.",
    "pull": "Download evals' results (and state).",
    "report": "One row per eval with its headline metrics.",
}
