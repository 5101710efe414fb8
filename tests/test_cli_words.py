"""How the command line reads what it is given: extra args only after --, choices in any case,
--version, and the reset prompt's answers.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import batchrun

ECHO_ARGS = f"{sys.executable} -c \"import json,sys; open(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + chr(10))\""


def test_extra_args_after_dashes_reach_every_eval_and_choices_take_any_case(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\n")
    out = tmp_path / "argv"
    command = f"{ECHO_ARGS} {out} {{eval}}"
    args = ["run", "m", "s.txt", "--progress", f"{tmp_path}/p/", "--command", command]
    done = batchrun(*args, "--stop-signal", "sigint", "--log-format", "JSON", "--", "--seed", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == ["a", "--seed", "1"]
    assert json.loads(done.stderr.splitlines()[0])["event"] == "run.started"  # JSON lines: the format was read


def test_a_bad_value_names_its_env_var_only_when_it_came_from_there(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\n")
    given = batchrun("run", "m", "s.txt", "--jobs", "many", cwd=tmp_path)
    assert given.returncode == 2
    assert "invalid value for --jobs / -j: " in given.stderr
    assert "BATCHRUN_JOBS" not in given.stderr
    assert "Value error" not in given.stderr
    from_env = batchrun("run", "m", "s.txt", cwd=tmp_path, env={**os.environ, "BATCHRUN_JOBS": "many"})
    assert from_env.returncode == 2
    assert "invalid value for --jobs / -j (from BATCHRUN_JOBS): " in from_env.stderr


def test_usage_errors_point_at_help_and_say_what_a_number_is_not(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\n")
    alone = batchrun("run", cwd=tmp_path)
    assert (alone.returncode, alone.stderr) == (
        2,
        "batchrun: error: Missing argument 'MODEL' (see: batchrun run --help)\n",
    )
    jobs = batchrun("run", "m", "s.txt", "-j", "three", cwd=tmp_path)
    assert (jobs.returncode, jobs.stderr) == (2, "batchrun: error: invalid value for --jobs / -j: not a whole number\n")
    grace = batchrun("run", "m", "s.txt", "--grace", "soon", cwd=tmp_path)
    assert grace.stderr == "batchrun: error: invalid value for --grace: not a number\n"


def test_version_prints_the_installed_version() -> None:
    done = batchrun("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("batchrun ")


def reset_at_a_terminal(tmp_path: Path, answer: bytes | None) -> tuple[int, str]:
    """`batchrun reset` with a terminal on stdin: type *answer*, or send SIGINT (Ctrl-C) at the prompt."""
    (tmp_path / "s.txt").write_text("a\n")
    progress = f"{tmp_path}/p/"
    assert batchrun("run", "m", "s.txt", "--progress", progress, "--command", "true", cwd=tmp_path).returncode == 0
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "reset", "m", "s.txt", "--progress", progress],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=tmp_path,
    )
    os.close(terminal)
    seen = b""
    while b"?" not in seen:
        seen += os.read(controller, 1024)
    if answer is None:
        proc.send_signal(signal.SIGINT)
    else:
        os.write(controller, answer)
    code = proc.wait(30)
    time.sleep(0.1)
    try:
        while chunk := os.read(controller, 1024):
            seen += chunk
    except OSError:  # the terminal's other end is closed
        pass
    os.close(controller)
    return code, seen.decode(errors="replace")


def test_answering_no_at_the_reset_prompt_deletes_nothing_and_says_so(tmp_path: Path) -> None:
    code, seen = reset_at_a_terminal(tmp_path, b"n\n")
    assert code == 1
    assert "nothing deleted" in seen
    assert "(1 completed eval, with all logs, state and results)?" in seen  # the prompt says what would go
    assert (tmp_path / "p" / "m.s.progress.txt").exists()


def test_ctrl_c_at_the_reset_prompt_ends_the_line_and_deletes_nothing(tmp_path: Path) -> None:
    code, seen = reset_at_a_terminal(tmp_path, None)
    assert code == 130
    prompt_line = seen.split("?", 1)[1]
    assert prompt_line.lstrip(" [y/N]:").startswith(("\r\n", "\n")), repr(seen)
    assert "batchrun: error: aborted, nothing deleted" in seen
    assert (tmp_path / "p" / "m.s.progress.txt").exists()


def test_status_of_a_run_that_never_ran_says_so_and_json_gives_zeros(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\nb\n")
    progress = f"{tmp_path}/p/"
    text = batchrun("status", "m", "s.txt", "--progress", progress, cwd=tmp_path)
    assert text.returncode == 1
    assert text.stdout.startswith(f"no progress stored at {progress}m.s.progress.txt (the 2 evals of the set")
    as_json = batchrun("status", "m", "s.txt", "--progress", progress, "--json", cwd=tmp_path)
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert (report["total"], report["done"], report["failed"], report["running"]) == (2, 0, 0, 0)


def test_report_of_a_run_that_never_ran_says_so_and_json_gives_pending_rows(tmp_path: Path) -> None:
    """A mistyped --progress: the table says nothing is stored there (exit 1), as status does."""
    (tmp_path / "s.txt").write_text("a\nb\n")
    progress = f"{tmp_path}/p/"
    text = batchrun("report", "m", "s.txt", "--progress", progress, cwd=tmp_path)
    assert text.returncode == 1
    assert text.stdout.startswith(f"no progress stored at {progress}m.s.progress.txt (the 2 evals of the set")
    as_json = batchrun("report", "m", "s.txt", "--progress", progress, "--json", cwd=tmp_path)
    assert as_json.returncode == 0
    assert [row["state"] for row in json.loads(as_json.stdout)["evals"]] == ["pending", "pending"]


def test_report_of_evals_without_state_folders_says_how_to_keep_results(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\n")
    progress = f"{tmp_path}/p/"
    assert batchrun("run", "m", "s.txt", "--progress", progress, "--command", "true", cwd=tmp_path).returncode == 0
    table = batchrun("report", "m", "s.txt", "--progress", progress, cwd=tmp_path)
    assert table.returncode == 0
    assert "no metrics" in table.stdout
    assert table.stderr.startswith("no results stored for any eval: an eval keeps results when it has a state folder")
    as_csv = batchrun("report", "m", "s.txt", "--progress", progress, "--csv", cwd=tmp_path)
    assert as_csv.stderr == ""  # machine-readable output stays quiet
