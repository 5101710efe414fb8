"""A store that dies mid-run: a stop signal still stops the run promptly, and the store's retries
show in the log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from helpers import BUCKET, aws_env, fake_command, free_port, journal_entries

pytestmark = pytest.mark.slow


@pytest.fixture
def doomed_s3(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A moto server of this test's own, in a process the test can kill."""
    port = free_port()
    with (tmp_path / "moto.log").open("wb") as moto_log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=moto_log,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)  # noqa: S310 - loopback
            break
        except OSError:
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.1)
    boto3.client("s3", endpoint_url=url, **_keys()).create_bucket(Bucket=BUCKET)
    yield server, url
    server.kill()
    server.wait()


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def test_sigterm_while_the_store_is_down_stops_in_order_not_with_a_store_error(
    doomed_s3: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    """With the store gone mid-run, SIGTERM still ends the run as a stop (143), within the grace
    and the final write's bound, and the failed retry rounds are logged.
    """
    server, url = doomed_s3
    (tmp_path / "set.txt").write_text("slow\nnext\n")
    journal = tmp_path / "journal"
    log = tmp_path / "stderr"
    args = ["run", "m", "set.txt", "--progress", f"s3://{BUCKET}/runs/p.txt", "--grace", "2", "--log-format", "json"]
    args += ["--command", fake_command(journal, "--sleep", "60")]
    env = {**os.environ, **aws_env(url)}
    with log.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "batchrun", *args], env=env, cwd=tmp_path, stderr=stderr)
    deadline = time.monotonic() + 30
    while not journal_entries(journal) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()
    server.wait()
    time.sleep(2.5)  # the background compaction now retries against a dead endpoint
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = proc.wait(timeout=60)
    elapsed = time.monotonic() - signalled
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert code == 143, log.read_text()[-3000:]
    # grace (2 s) + the final write's bound (5 s) + slack for a loaded machine; before the fix the
    # run waited out every retry of every write and ended with exit 3 after 12-19 s.
    assert elapsed < 15
    names = [e["event"] for e in events]
    assert "store.retrying" in names
    assert "run.interrupted" in names
