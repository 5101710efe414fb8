"""The summary at the end of a run: a run.summary event when logs are JSON, readable lines on a
terminal; failed evals with how they last ended and the command that shows their output.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from helpers import batchrun

FAIL_B = f"{sys.executable} -c \"import sys; print('boom'); sys.exit(3 if sys.argv[1] == 'b' else 0)\" {{eval}}"


def run(tmp_path: Path, *flags: str) -> tuple[int, str]:
    (tmp_path / "s.txt").write_text("a\nb\n")
    args = ["run", "m", "s.txt", "--progress", f"{tmp_path}/p/", "--command", FAIL_B, "--max-attempts", "2"]
    done = batchrun(*args, "--retry-backoff", "0", *flags, cwd=tmp_path)
    return done.returncode, done.stderr


def test_json_logs_end_with_a_summary_event_naming_failed_evals_and_where_to_look(tmp_path: Path) -> None:
    code, stderr = run(tmp_path, "--log-format", "json")
    assert code == 1
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    end = events[-1]
    assert end["event"] == "run.summary"
    assert (end["total"], end["done"], end["failed"], end["pending"]) == (2, 1, 1, 0)
    (row,) = end["failed_evals"]
    assert (row["eval"], row["ended"], row["attempts"], row["last_output"]) == ("b", "exit 3", 2, "boom")
    assert row["logs"] == f"batchrun logs m s b --progress {tmp_path}/p/m.s.progress.txt"
    assert end["hint"] == f"batchrun status m s --progress {tmp_path}/p/m.s.progress.txt"


def test_console_logs_end_with_readable_summary_lines(tmp_path: Path) -> None:
    code, stderr = run(tmp_path, "--log-format", "console")
    assert code == 1
    tail = stderr.splitlines()[-4:]
    assert tail[0].startswith("2 evals: 1 done, 1 failed, 0 not done, in ")
    assert tail[1] == "  failed: b (exit 3, 2 attempts): boom"
    assert tail[2] == f"    batchrun logs m s b --progress {tmp_path}/p/m.s.progress.txt"
    assert tail[3] == f"more: batchrun status m s --progress {tmp_path}/p/m.s.progress.txt"
    assert "run.summary" not in stderr


def test_commands_in_the_summary_leave_out_the_default_progress_and_work_as_printed(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\nb\n")
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"} | {"TMPDIR": str(tmp_path / "tmp")}
    args = ["run", "m", "s.txt", "--command", FAIL_B, "--max-attempts", "1", "--log-format", "json"]
    done = batchrun(*args, cwd=tmp_path, env=env)
    assert done.returncode == 1
    end = json.loads(done.stderr.splitlines()[-1])
    assert (end["failed_evals"][0]["logs"], end["hint"]) == ("batchrun logs m s b", "batchrun status m s")
    printed = batchrun(*shlex.split(end["failed_evals"][0]["logs"])[1:], cwd=tmp_path, env=env)
    assert (printed.returncode, printed.stdout) == (0, "boom\n")
