"""Pods dying: batchrun SIGKILLed between and during evals against S3, restarted as a new process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import boto3
import pytest
from helpers import (
    BUCKET,
    batchrun,
    fake_command,
    journal_entries,
    kill_fake_evals,
    open_store,
    wait_for_recorded_attempts,
)

from batchrun import EvalState

pytestmark = pytest.mark.slow

EVALS = [f"eval-{i:02d}" for i in range(12)]


def start_batchrun(args: list[str], env: dict[str, str], cwd: Path, log: Path | None = None) -> subprocess.Popen[bytes]:
    with (log or Path(os.devnull)).open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "batchrun", *args, "--log-format", "json"],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def acknowledged(log: Path) -> set[str]:
    """Evals the killed process had logged as completed."""
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {e["eval"] for e in events if e["event"] == "eval.completed"}


def kill_pod(proc: subprocess.Popen[bytes], journal: Path) -> None:
    """Kill batchrun and every eval it started at once, with no signal handled, as a lost node does."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kill_fake_evals(journal)


def read_progress(key: str) -> list[str]:
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body.decode().splitlines()


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_repeated_kills_complete_every_eval_exactly_once(s3_env: dict[str, str], tmp_path: Path, jobs: str) -> None:
    """Killed again and again, restarted runs finish the set: each eval recorded once, failures never."""
    (tmp_path / "set.txt").write_text("\n".join(EVALS) + "\n")
    journal = tmp_path / "journal"
    progress = f"s3://{BUCKET}/runs/m.set.progress.txt"
    command = fake_command(journal, "--sleep", "0.3", "--fail", "eval-05")
    args = ["run", "m", "set.txt", "--progress", progress, "--command", command, "--jobs", jobs]
    # Kills come right after evals end, so a lost eval that reruns alone can be killed again and
    # again by chance: --max-lost is not what this test is about.
    args += ["--max-attempts", "10", "--max-lost", "10", "--retry-backoff", "0"]
    # Each restart is a new worker id, and the dead workers' heartbeats stay in the store: from the
    # ninth start on there are more than a starting worker reads at once, so it reads the dead holder
    # of the evals left only after two quiet heartbeats (20 s each time at the default 10 s: most of
    # this test's time). Beats every 0.5 s take the same path, with a 1 s wait.
    args += ["--heartbeat", "0.5"]
    rng = random.Random(1234 + int(jobs))
    kills = 0
    for attempt in range(30):
        log = tmp_path / f"stderr-{attempt}"
        proc = start_batchrun(args, s3_env, tmp_path, log)
        # Kill after one to three more evals ended, plus up to 0.3 s: between evals or during one.
        target = sum(1 for e in journal_entries(journal) if e[0] == "end") + rng.randint(1, 3)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if sum(1 for e in journal_entries(journal) if e[0] == "end") >= target:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.02)
        code = proc.poll()
        if code is None:
            kill_pod(proc, journal)
            kills += 1
            # Durable before acknowledged: whatever the dead process logged as completed is stored.
            stored = open_store(progress).load()
            assert all(stored.state(name) is EvalState.DONE for name in acknowledged(log))
            continue
        if code == 1:  # everything ran; only the failing eval is left
            break
        pytest.fail(f"unexpected exit code {code}")
    else:
        pytest.fail("the run never finished")
    assert kills >= 2, "the test should have killed some runs"

    lines = read_progress("runs/m.set.progress.txt")
    assert sorted(lines) == sorted(e for e in EVALS if e != "eval-05")
    assert len(lines) == len(set(lines))
    status = batchrun("status", "--progress", progress, "--json", env=s3_env, cwd=tmp_path)
    report = json.loads(status.stdout)
    states = {e["name"]: e["state"] for e in report["evals"]}
    assert states == {e: ("failed" if e == "eval-05" else "done") for e in EVALS}

    entries = journal_entries(journal)
    runs = Counter(e[1] for e in entries if e[0] == "start")
    ended_ok = Counter(e[1] for e in entries if e[0] == "end" and e[2] == "0")
    for name in EVALS:
        if name != "eval-05":
            assert ended_ok[name] >= 1, name
    # Every extra run of an eval is explained by a kill: a kill interrupts at most --jobs evals,
    # and the failing eval runs once per batchrun start that reached it.
    extra = sum(runs[name] - 1 for name in EVALS if name != "eval-05")
    assert extra <= kills * int(jobs)


def test_two_runs_at_once_lose_no_record(s3_env: dict[str, str], tmp_path: Path) -> None:
    """Two batchrun processes on one progress URI (an old and a new pod) both finish; none is lost."""
    names = [f"e{i:02d}" for i in range(20)]
    (tmp_path / "set.txt").write_text("\n".join(names) + "\n")
    journal = tmp_path / "journal"
    progress = f"s3://{BUCKET}/runs/two.progress.txt"
    args = [
        "run",
        "m",
        "set.txt",
        "--progress",
        progress,
        "--command",
        fake_command(journal, "--sleep", "0.05"),
        "--jobs",
        "2",
    ]
    procs = [start_batchrun(args, s3_env, tmp_path), start_batchrun(args, s3_env, tmp_path)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = read_progress("runs/two.progress.txt")
    assert sorted(lines) == names
    status = batchrun("status", "--progress", progress, "--json", env=s3_env, cwd=tmp_path)
    assert '"done": 20' in status.stdout


def test_kill_during_an_eval_reruns_it_and_counts_the_attempt(s3_env: dict[str, str], tmp_path: Path) -> None:
    """An eval whose pod died mid-run is not completed, runs again, and its lost attempt is counted."""
    (tmp_path / "set.txt").write_text("slow\n")
    journal = tmp_path / "journal"
    progress = f"s3://{BUCKET}/runs/slow.progress.txt"
    args = ["run", "m", "set.txt", "--progress", progress, "--command", fake_command(journal, "--sleep", "3")]
    proc = start_batchrun(args, s3_env, tmp_path)
    deadline = time.monotonic() + 30
    while not journal_entries(journal) and time.monotonic() < deadline:
        time.sleep(0.05)
    # The start record is written while the process launches: kill once it is stored, not on a guess.
    wait_for_recorded_attempts(progress, "slow", 1)
    assert proc.poll() is None
    assert not [e for e in journal_entries(journal) if e[0] == "end"], "the eval ended before the kill"
    kill_pod(proc, journal)
    report = batchrun("status", "--progress", progress, "--json", env=s3_env, cwd=tmp_path).stdout
    assert '"state": "pending", "attempts": 1' in report
    assert start_batchrun(args, s3_env, tmp_path).wait(timeout=60) == 0
    attempts = [e[2] for e in journal_entries(journal) if e[0] == "start"]
    assert attempts == ["1", "2"]
    assert read_progress("runs/slow.progress.txt") == ["slow"]
