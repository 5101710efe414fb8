"""How help reads: plain text that wraps instead of cutting off (defaults and env var names in
full, at any width), usage lines that say ``MODEL EVAL_SET`` and a value's name (``--jobs N``)
instead of its Python type (``<int>``). typer is pinned (pyproject.toml): these adjust its
0.29 help formatting, and tests/test_help.py checks the result at 80 and 120 columns.
"""

from __future__ import annotations

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
