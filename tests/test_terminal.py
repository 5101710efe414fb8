"""batchrun in a real terminal (tmux): the live bar with the running evals and an ETA at the
bottom, the stop message after Ctrl-C, short log lines, and the summary at the end.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import fake_command

pytestmark = pytest.mark.slow


@pytest.fixture
def tmux() -> Iterator[Callable[..., str]]:
    """Run a shell command in a fresh tmux session 120x30; yields a function that captures its screen."""
    tool = shutil.which("tmux")
    if tool is None:
        pytest.skip("tmux is not installed (.ci/run installs it from Debian's packages)")
    name = f"batchrun-{uuid.uuid4().hex[:8]}"
    sessions: list[str] = []

    def start(command: str) -> str:
        subprocess.run([tool, "new-session", "-d", "-s", name, "-x", "120", "-y", "30", command], check=True)
        sessions.append(name)
        return name

    def screen() -> str:
        done = subprocess.run([tool, "capture-pane", "-p", "-t", name], capture_output=True, text=True, check=False)
        return done.stdout

    def keys(*words: str) -> None:
        subprocess.run([tool, "send-keys", "-t", name, *words], check=True)

    def api(action: str, *args: str) -> str:
        if action == "start":
            return start(*args)
        if action == "keys":
            keys(*args)
            return ""
        return screen()

    yield api
    for session in sessions:
        subprocess.run([tool, "kill-session", "-t", session], check=False, capture_output=True)


def wait_for(capture: Callable[[], str], check: Callable[[str], bool], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = capture()
        if check(text):
            return text
        time.sleep(0.1)
    pytest.fail(f"not on the screen in {timeout} s:\n{capture()}")


def run_line(tmp_path: Path, *args: str) -> str:
    batchrun = shlex.join(
        [sys.executable, "-m", "batchrun", "run", "m", "s.txt", "--progress", f"{tmp_path}/p/", *args]
    )
    return f"cd {shlex.quote(str(tmp_path))} && {batchrun}; echo EXIT=$?; sleep 60"


def test_the_bar_names_running_evals_and_says_what_a_stop_waits_for(tmp_path: Path, tmux: Callable[..., str]) -> None:
    (tmp_path / "s.txt").write_text("alpha\nbeta\ngamma\n")
    command = fake_command(tmp_path / "journal", "--sleep", "30", "--trap", "ignore")
    tmux("start", run_line(tmp_path, "--command", command, "--jobs", "2", "--grace", "4"))
    screen = lambda: tmux("screen")  # noqa: E731
    shown = wait_for(screen, lambda text: "running: alpha, beta" in text)
    bar = [line for line in shown.splitlines() if "running:" in line][-1]
    assert "0/3 done" in bar
    assert "elapsed, ETA" in bar
    started = [line for line in shown.splitlines() if "eval.started" in line]
    assert started
    assert all(len(line) <= 120 and "command=" not in line for line in started)  # short lines: no argv
    assert started[0][:8].count(":") == 2  # a time of day, HH:MM:SS
    tmux("keys", "C-c")
    stopping = wait_for(screen, lambda text: "stopping: waiting up to 4 s for 2 evals (Ctrl-C again to kill)" in text)
    assert "EXIT=" not in stopping
    ended = wait_for(screen, lambda text: "EXIT=130" in text)
    assert "stopped: 0/3 evals done; run the same command again to resume" in ended


def test_a_finished_run_ends_with_its_summary_and_a_clean_last_line(tmp_path: Path, tmux: Callable[..., str]) -> None:
    (tmp_path / "s.txt").write_text("ok\nbad\n")
    command = fake_command(tmp_path / "journal", "--sleep", "0.5", "--fail", "bad")
    tmux("start", run_line(tmp_path, "--command", command, "--max-attempts", "1"))
    shown = wait_for(lambda: tmux("screen"), lambda text: "EXIT=1" in text)
    assert "2 evals: 1 done, 1 failed, 0 not done, in " in shown
    assert "  failed: bad (exit 3, 1 attempts)" in shown
    assert "batchrun logs m s bad --progress" in shown
    assert "more: batchrun status m s --progress" in shown
    assert "ETA" not in shown.split("2 evals:", 1)[1]  # the bar is gone
