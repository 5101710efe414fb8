"""Review of the newcomer-walk commits (output after `eval.started`, the summary's commands, `logs`,
`reset`'s question, the stopped line, a command changed while no eval has completed): each test
shows a defect the review found; each failed before its fix.
"""

from __future__ import annotations

import json
import os
import pty
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import batchrun, open_store, run_with_json_logs, slow_event_writes, wait_for_recorded_attempts

from batchrun import CommandTemplate, EvalSet, RunPlan
from batchrun._identity import RunIdentity
from batchrun._state import Outcome
from batchrun.progress import ProgressStore

FAIL_B = f"{sys.executable} -c \"import sys; print('boom'); sys.exit(3 if sys.argv[1] == 'b' else 0)\" {{eval}}"


def _events(lines: list[str]) -> list[str]:
    """The JSON log lines as their event names, the evals' lines as they are."""
    return [json.loads(line)["event"] if line.startswith("{") else line for line in lines]


def test_output_printed_after_a_timeout_still_comes_after_the_started_line(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "p.txt"))
    slow_event_writes(store, 0.5)
    command = "sh -c 'trap \"echo bye-$0 >&2; exit 1\" TERM; sleep 5 & wait' {eval}"
    plan = RunPlan(
        "m", EvalSet("s", ("a",), "test"), CommandTemplate.parse(command), eval_timeout=0.1, max_attempts=1, grace=2
    )
    _, lines = run_with_json_logs(plan, store)
    seen = [line for line in _events(lines) if line in ("eval.started", "bye-a")]
    assert seen == ["eval.started", "bye-a"]


def _stored_run(tmp_path: Path) -> tuple[str, ProgressStore]:
    uri = str(tmp_path / "p.txt")
    store = open_store(uri)
    store.claim(RunIdentity("m", "s", "prog {eval}", (), ("e",)))
    return uri, store


@pytest.mark.parametrize(
    ("reason", "tail", "exit_code"),
    [("lost", ("batchrun or its pod died during it",), None), ("exit", ("boom",), 1)],
    ids=["lost-with-its-pod", "log-not-saved"],
)
def test_logs_does_not_say_printed_nothing_of_an_attempt_whose_output_is_unknown(
    tmp_path: Path, reason: str, tail: tuple[str, ...], exit_code: int | None
) -> None:
    uri, store = _stored_run(tmp_path)
    attempt = store.start("e", 1)
    store.record(attempt.finished(Outcome.FAILED, exit_code=exit_code, final=True, reason=reason, tail=tail))
    shown = batchrun("logs", "m", "s", "e", "--progress", uri)
    assert "printed nothing" not in shown.stderr


def test_logs_prints_the_output_of_an_eval_since_removed_from_the_set_file(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\nb\n")
    progress = str(tmp_path / "p.txt")
    args = ["run", "m", "s.txt", "--progress", progress, "--command", FAIL_B, "--max-attempts", "1"]
    ran = batchrun(*args, cwd=tmp_path)
    assert ran.returncode == 1
    (tmp_path / "s.txt").write_text("a\n")  # b failed: taken out of the set for now
    shown = batchrun("logs", "m", "s.txt", "b", "--progress", progress, cwd=tmp_path)
    assert (shown.returncode, shown.stdout) == (0, "boom\n"), shown.stderr


def test_reset_still_asks_when_the_records_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\n")
    progress = str(tmp_path / "p.txt")
    ran = batchrun("run", "m", "s.txt", "--progress", progress, "--command", "true {eval}", cwd=tmp_path)
    assert ran.returncode == 0
    (tmp_path / "p.txt.d" / "snapshot.json").write_text("garbage")
    leader, follower = pty.openpty()
    try:
        os.write(leader, b"n\n")  # the answer waits in the terminal's input
        proc = subprocess.run(
            [sys.executable, "-m", "batchrun", "reset", "m", "s.txt", "--progress", progress],
            stdin=follower,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert "Delete all progress at" in proc.stdout, proc.stderr
    assert proc.returncode == 1


def test_a_stopped_fresh_run_does_not_advise_running_the_same_command_again(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\n")
    started = tmp_path / "started"
    command = f"sh -c 'touch {started}; sleep 30' {{eval}}"
    args = ["run", "m", "s.txt", "--progress", str(tmp_path / "p.txt"), "--fresh", "--log-format", "console"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args, "--command", command, "--grace", "1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped:")]
    assert stopped, stderr
    assert "same command" not in stopped[0] or "--fresh" in stopped[0]


def test_a_new_command_is_not_taken_while_another_worker_runs_the_old_one(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a\nb\n")
    uri = str(tmp_path / "p.txt")
    release = tmp_path / "release"
    old = f"sh -c 'n=0; while [ ! -e {release} ] && [ $n -lt 300 ]; do sleep 0.05; n=$((n+1)); done' {{eval}}"
    common = ["run", "m", "s.txt", "--progress", uri, "--no-fail-fast"]
    first = subprocess.Popen(
        [sys.executable, "-m", "batchrun", *common, "--command", old, "--worker-id", "wa"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_recorded_attempts(uri, "a", 1)
        second = subprocess.Popen(
            [sys.executable, "-m", "batchrun", *common, "--command", "true {eval}", "--worker-id", "wb"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)  # the second process has claimed the run (or been refused) by now
        release.touch()
        second.communicate(timeout=60)
        first.communicate(timeout=60)
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    store = open_store(uri)
    identity = store.identity()
    assert identity is not None
    by_old = [a for name in ("a", "b") for a in store.load().of(name) if a.worker == "wa" and a.outcome]
    completed_by_old = [a for a in by_old if a.outcome is Outcome.COMPLETED]
    # Either the new command was refused, or nothing the old one did counts under the new one.
    assert identity.command == old or not completed_by_old


def test_the_printed_logs_command_works_for_a_set_name_starting_with_a_dash(tmp_path: Path) -> None:
    (tmp_path / "sets.yaml").write_text(json.dumps({"-s": {"evals": ["a", "b"]}}))
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"} | {"TMPDIR": str(tmp_path / "tmp")}
    args = ["run", "m", "sets.yaml", "--command", FAIL_B, "--max-attempts", "1", "--log-format", "json"]
    done = batchrun(*args, cwd=tmp_path, env=env)
    assert done.returncode == 1
    end = json.loads(done.stderr.splitlines()[-1])
    printed = batchrun(*shlex.split(end["failed_evals"][0]["logs"])[1:], cwd=tmp_path, env=env)
    assert (printed.returncode, printed.stdout) == (0, "boom\n"), printed.stderr
