"""Help reads like a well-made tool's at 80 and 120 columns: usage lines name MODEL EVAL_SET, no
Python type tags, every env var and default in full (wrapped, never cut off), examples at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer.main

from batchrun.cli import app

COMMANDS = ("run", "status", "reset", "logs", "pull", "report")


def help_text(command: str, columns: int) -> str:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", command, "--help"], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def envvars(command: str) -> list[str]:
    group = typer.main.get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    return [p.envvar for p in params if isinstance(getattr(p, "envvar", None), str)]


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_arguments_plainly_and_shows_every_env_var_in_full(command: str, columns: int) -> None:
    text = help_text(command, columns)
    usage = text.splitlines()[0]
    assert re.match(rf"Usage: batchrun {command} \[OPTIONS\] \[?MODEL\]? \[?EVAL_SET\]?", usage), usage
    assert "{" not in usage
    assert not re.search(r"<(str|bool|int|float|list)", text), "a Python type tag in the help"
    assert "…" not in text
    flat = " ".join(text.split())
    for name in envvars(command):
        assert name in flat, f"{name} missing from {command} --help"
    assert "Examples:" in text
    assert all(len(line) <= columns for line in text.splitlines()), text


def test_top_level_help_lists_every_command_and_the_version_option() -> None:
    done = subprocess.run([sys.executable, "-m", "batchrun", "--help"], capture_output=True, text=True, check=False)
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), command
    assert "--version" in done.stdout
    narrow = subprocess.run(
        [sys.executable, "-m", "batchrun", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert "..." not in narrow.stdout.split("Commands:", 1)[1], "a command's line cut short"


def test_run_help_puts_every_option_in_a_named_group() -> None:
    text = help_text("run", 100)
    headings = [line[:-1] for line in text.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert headings == [
        "Arguments",
        "Progress store",
        "Evals",
        "Retries and stopping",
        "State folders",
        "Workers",
        "Output",
        "Options",
    ]
    ungrouped = text.split("\nOptions:\n", 1)[1].split("Examples:", 1)[0]
    assert re.findall(r"--[a-z-]+", ungrouped) == ["--help"], "an option of run outside its group"
