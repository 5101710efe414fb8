"""Helpers shared by the tests: AWS environment, subprocess runs, the fake eval's journal."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from batchrun._console import Console
from batchrun._logging import LogFormat, configure_logging
from batchrun.location import resolve_location
from batchrun.plan import RunPlan, RunSummary
from batchrun.progress import ProgressStore
from batchrun.runner import Runner

TESTS = Path(__file__).parent
FAKE_EVAL = TESTS / "fake_eval.py"
BUCKET = "batchrun-test"
AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def aws_env(url: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def open_store(uri: str) -> ProgressStore:
    """A new store instance on *uri*, as a new process would open it."""
    return ProgressStore.open(resolve_location(uri, model="m", eval_set="s"))


def batchrun(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m batchrun ARGS` to completion, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def fake_command(journal: Path, *flags: str) -> str:
    """A --command that runs the fake eval, journalling each start and end to *journal*."""
    extra = " ".join(flags)
    return f"{sys.executable} {FAKE_EVAL} {{eval}} {{attempt}} --journal {journal} {extra}".strip()


def wait_for_recorded_attempts(uri: str, eval_name: str, count: int, timeout: float = 60) -> None:
    """Wait until the store at *uri* holds *count* attempts of *eval_name* (a start is recorded while
    the eval's process launches, so a process seen running may not be counted yet).
    """
    deadline = time.monotonic() + timeout
    while len(open_store(uri).load().of(eval_name)) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{eval_name}: fewer than {count} attempts recorded at {uri} after {timeout} s")
        time.sleep(0.05)


def journal_entries(journal: Path) -> list[list[str]]:
    """The fake eval's journal as lists of words: ['start', eval, attempt, pid] or ['end', eval, code]."""
    if not journal.exists():
        return []
    return [line.split() for line in journal.read_text().splitlines() if line.strip()]


def is_fake_eval(pid: int, journal: Path) -> bool:
    """Whether *pid* is still a live fake eval of this test (pids are reused: check before killing)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and b"fake_eval.py" in cmdline and str(journal).encode() in cmdline


def kill_fake_evals(journal: Path) -> None:
    """SIGKILL the process groups of this test's fake evals that still run (as a lost node would)."""
    for entry in journal_entries(journal):
        if entry[0] == "start" and is_fake_eval(int(entry[3]), journal):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(entry[3]), signal.SIGKILL)


def system_tool(name: str, why: str) -> str:
    """The path of a machine tool the test needs: skipped where it is missing, except in CI
    (CI=true), where .ci/run installs it and a missing one is a failure.
    """
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: {why}")
        pytest.skip(f"{name} is not installed ({why}; .ci/run installs it)")
    return path


def wait_for(journal: Path, kind: str, count: int = 1, timeout: float = 30) -> list[list[str]]:
    """The journal entries of *kind* once there are *count* of them; the test fails after *timeout* s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = [e for e in journal_entries(journal) if e[0] == kind]
        if len(entries) >= count:
            return entries
        time.sleep(0.02)
    pytest.fail(f"no {count} {kind!r} entries in the journal after {timeout} s")


class Wrapped:
    """A backend wrapper that passes every call through; a test overrides the methods it needs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def slow_event_writes(store: ProgressStore, seconds: float) -> None:
    """Make *store*'s event writes (attempt starts and ends) take *seconds* more: an S3 PUT on a bad day."""
    slow = Wrapped(store.backend)

    def create(path: str, data: bytes, *, durable: bool) -> None:
        if "/events/" in path:
            time.sleep(seconds)
        slow.inner.create(path, data, durable=durable)

    slow.create = create
    store.backend = slow


def run_with_json_logs(plan: RunPlan, store: ProgressStore) -> tuple[RunSummary, list[str]]:
    """Run *plan* in this process with JSON logs; its summary, and the lines of the one stream that
    gets both the log lines and the evals' stderr, in the order written.
    """
    stream = io.BytesIO()
    console = Console(out=io.BytesIO(), err=io.TextIOWrapper(stream, write_through=True), bar=False)
    configure_logging(console, LogFormat.JSON, terminal=False)
    try:
        summary = Runner(plan, store, console).run()
    finally:
        structlog.reset_defaults()
    return summary, stream.getvalue().decode().splitlines()
