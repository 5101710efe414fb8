"""Defects found by reviewing the hardening work itself: a wait for a dead writer that never ended,
a second stop signal that dropped the final write, and a store error that waited for the queue.
"""

from __future__ import annotations

import io
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import Wrapped, fake_command, journal_entries, open_store
from structlog.testing import capture_logs

from batchrun import CommandTemplate, EvalSet, RunPlan, StoreError
from batchrun._console import Console
from batchrun._signals import StopRequest
from batchrun._state import Outcome
from batchrun.runner import Runner


def test_an_attempt_whose_writer_has_no_heartbeat_is_not_waited_for(tmp_path: Path) -> None:
    """Another writer's attempt that never ends and whose worker has no heartbeat (its process
    was killed before heartbeats, or it left) is lost: the eval runs again at once, alone.
    """
    uri = str(tmp_path / "p.txt")
    dead = open_store(uri).start("e", 1)  # a writer that never joined the fleet
    journal = tmp_path / "journal"
    template = CommandTemplate.parse(fake_command(journal))
    console = Console(out=io.BytesIO(), err=io.StringIO(), bar=False)
    started = time.monotonic()
    summary = Runner(RunPlan("m", EvalSet("s", ("e",), "t"), template), open_store(uri), console).run()
    assert time.monotonic() - started < 10
    assert summary.done == 1
    attempts = open_store(uri).load().of("e")
    assert [a.number for a in attempts] == [1, 2]
    assert attempts[0].id == dead.id
    assert attempts[0].outcome is None
    assert attempts[1].alone
    assert attempts[1].outcome is Outcome.COMPLETED


def test_a_second_signal_does_not_drop_the_records_of_interrupted_attempts(tmp_path: Path) -> None:
    """With a slow store, a second stop signal still lets the final write store the interrupted record."""
    store = open_store(str(tmp_path / "p.txt"))
    slow = Wrapped(store.backend)

    def create(path: str, data: bytes, *, durable: bool) -> None:
        if "/events/" in path:
            time.sleep(0.3)
        store.backend.inner.create(path, data, durable=durable)  # type: ignore[attr-defined]

    slow.create = create  # type: ignore[attr-defined]
    store.backend = slow  # type: ignore[assignment]
    journal = tmp_path / "journal"
    template = CommandTemplate.parse(fake_command(journal, "--sleep", "30"))
    console = Console(out=io.BytesIO(), err=io.StringIO(), bar=False)
    stop = StopRequest()
    runner = Runner(RunPlan("m", EvalSet("s", ("e",), "t"), template, grace=0.5), store, console, stop)
    thread = threading.Thread(target=runner.run)
    with capture_logs() as logs:
        thread.start()
        deadline = time.monotonic() + 30
        while not journal_entries(journal) and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.request(signal.SIGINT)
        time.sleep(0.1)
        stop.request(signal.SIGINT)  # Ctrl-C again
        thread.join(30)
    assert "run.progress_not_saved" not in [e["event"] for e in logs]  # before the fix: given up at once
    (attempt,) = open_store(str(tmp_path / "p.txt")).load().of("e")
    assert attempt.outcome is Outcome.INTERRUPTED


def test_a_store_error_in_one_eval_stops_the_run_at_once(tmp_path: Path) -> None:
    """A claim the store refuses for a later eval stops the run then, not when the evals queued
    before it finish, and no further eval starts.
    """
    store = open_store(str(tmp_path / "p.txt"))
    failing = Wrapped(store.backend)

    def create(path: str, data: bytes, *, durable: bool) -> None:
        if "/claims/" in path and "/c/" in path:
            msg = "progress store: cannot create (simulated outage)"
            raise StoreError(msg)
        store.backend.inner.create(path, data, durable=durable)  # type: ignore[attr-defined]

    failing.create = create  # type: ignore[attr-defined]
    store.backend = failing  # type: ignore[assignment]
    journal = tmp_path / "journal"
    template = CommandTemplate.parse(fake_command(journal, "--sleep", "30"))
    console = Console(out=io.BytesIO(), err=io.StringIO(), bar=False)
    names = ("a", "c", "d", "e", "f")
    runner = Runner(RunPlan("m", EvalSet("s", names, "t"), template, jobs=2, grace=0.5), store, console)
    started = time.monotonic()
    with pytest.raises(StoreError, match="simulated outage"):
        runner.run()
    assert time.monotonic() - started < 25  # "a" sleeps 30 s: before the fix the error waited for it
    assert {e[1] for e in journal_entries(journal) if e[0] == "start"} <= {"a"}
