"""batchrun against a second S3 implementation, LocalStack: SIGKILLed runs restarted until done.

The store's contract runs on LocalStack too, through the `progress_uri` fixture's "localstack" parameter.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from helpers import BUCKET, aws_env, batchrun, fake_command, journal_entries, kill_fake_evals, open_store
from localstack_server import aws_client_args

from batchrun import EvalState

pytestmark = pytest.mark.slow

EVALS = [f"eval-{i:02d}" for i in range(12)]


def test_killed_runs_on_localstack_record_every_eval_exactly_once(
    localstack: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On LocalStack's S3, runs SIGKILLed at random points and restarted record each eval exactly once,
    and what a killed run acknowledged is stored.
    """
    for key, value in aws_env(localstack).items():
        monkeypatch.setenv(key, value)  # for open_store in this process
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    (tmp_path / "set.txt").write_text("\n".join(EVALS) + "\n")
    journal = tmp_path / "journal"
    key = f"runs/{tmp_path.name}/m.set.progress.txt"
    progress = f"s3://{BUCKET}/{key}"
    command = fake_command(journal, "--sleep", "0.2")
    args = ["run", "m", "set.txt", "--progress", progress, "--command", command, "--jobs", "3"]
    args += ["--max-attempts", "10", "--retry-backoff", "0", "--log-format", "json"]
    rng = random.Random(22)
    kills = 0
    for number in range(30):
        log = tmp_path / f"stderr-{number}"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "batchrun", *args],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        target = sum(1 for e in journal_entries(journal) if e[0] == "end") + rng.randint(1, 4)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and kills < 4:
            if sum(1 for e in journal_entries(journal) if e[0] == "end") >= target:
                time.sleep(rng.uniform(0, 0.2))
                break
            time.sleep(0.02)
        if proc.poll() is None and kills < 4:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kill_fake_evals(journal)
            kills += 1
            events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            acknowledged = {e["eval"] for e in events if e["event"] == "eval.completed"}
            stored = open_store(progress).load()
            assert all(stored.state(name) is EvalState.DONE for name in acknowledged)
            continue
        code = proc.wait(timeout=120)
        assert code == 0, log.read_text()[-3000:]
        break
    else:
        pytest.fail("the run never finished")
    assert kills >= 2, "the test should have killed some runs"
    body = boto3.client("s3", **aws_client_args(localstack)).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert sorted(body.decode().splitlines()) == EVALS
    report = json.loads(batchrun("status", "--progress", progress, "--json", env=env, cwd=tmp_path).stdout)
    assert (report["done"], report["total"]) == (len(EVALS), len(EVALS))
