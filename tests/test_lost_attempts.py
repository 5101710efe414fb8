"""Runner defects found in review (issue 7): pod deaths that failed innocent evals, completions
thrown away with their log, two writers exceeding --max-attempts, evals launched while their
records could not be written, and start-up reading events one at a time.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import Wrapped, batchrun, fake_command, journal_entries, kill_fake_evals, open_store
from structlog.testing import capture_logs

from batchrun import CommandTemplate, EvalSet, Outcome, RunPlan, StoreError
from batchrun._console import Console
from batchrun._policy import next_step
from batchrun._state import Attempt, EvalState
from batchrun.runner import Runner


def attempt(number: int, outcome: Outcome | None, *, alone: bool = False, ident: str = "") -> Attempt:
    record = Attempt(ident or f"w-{number}", "e", number, "host", float(number), alone=alone)
    return record if outcome is None else record.finished(outcome, exit_code=0 if outcome is Outcome.COMPLETED else 1)


def decide(*attempts: Attempt, running: tuple[str, ...] = ()) -> Any:
    return next_step(attempts, max_attempts=3, max_lost=3, running=running)


def test_a_death_beside_other_evals_is_not_a_failure_and_the_next_attempt_runs_alone() -> None:
    """A lost attempt that shared its pod counts nothing against its eval; the eval runs alone next."""
    step = decide(attempt(1, None), attempt(2, None), attempt(3, None))
    assert step.give_up is None
    assert step.alone


def test_deaths_while_alone_end_the_eval_failed_after_max_lost() -> None:
    """Three deaths while running alone are a crash loop: the eval is recorded failed, reason lost."""
    step = decide(
        attempt(1, None), attempt(2, None, alone=True), attempt(3, None, alone=True), attempt(4, None, alone=True)
    )
    assert step.give_up is not None
    assert step.give_up.reason == "lost"
    assert step.give_up.final


def test_an_eval_runs_with_others_again_once_it_finished_after_a_death() -> None:
    """Alone only until the eval finishes once; an interrupted attempt is not a finish, a running one not lost."""
    assert not decide(attempt(1, None), attempt(2, Outcome.FAILED)).alone
    assert decide(attempt(1, None), attempt(2, Outcome.INTERRUPTED)).alone
    assert not decide(attempt(1, None, ident="mine"), running=("mine",)).alone


def start_pod(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "batchrun", *args, "--log-format", "json"],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def running_evals(journal: Path) -> int:
    entries = journal_entries(journal)
    ended = Counter(e[1] for e in entries if e[0] == "end")
    started = Counter(e[1] for e in entries if e[0] == "start")
    return sum(1 for name in started if started[name] > ended[name])


@pytest.mark.slow
def test_innocent_evals_survive_repeated_pod_deaths(tmp_path: Path) -> None:
    """Pods killed again and again while several evals run: no eval is ever recorded failed, even
    with --max-attempts 1 (lost attempts are not failures), and the set completes.
    """
    (tmp_path / "set.txt").write_text("\n".join(f"e{i}" for i in range(6)) + "\n")
    journal = tmp_path / "journal"
    progress = str(tmp_path / "p.txt")
    args = ["run", "m", "set.txt", "--progress", progress, "--command", fake_command(journal, "--sleep", "1.5")]
    args += ["--jobs", "3", "--max-attempts", "1", "--retry-backoff", "0"]
    kills = 0
    while kills < 4:
        proc = start_pod(args, tmp_path, tmp_path / "log")
        deadline = time.monotonic() + 60
        while running_evals(journal) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before a kill landed"
        proc.kill()
        proc.wait()
        kill_fake_evals(journal)
        kills += 1
        # Each death while several evals ran: their lost attempts are not failures.
        state = open_store(progress).load()
        assert not [n for n in state.attempts if state.state(n) is EvalState.FAILED]
    final = start_pod(args, tmp_path, tmp_path / "log")
    assert final.wait(timeout=120) == 0, (tmp_path / "log").read_text()[-2000:]
    report = json.loads(batchrun("status", "--progress", progress, "--json", cwd=tmp_path).stdout)
    assert report["done"] == 6
    assert report["failed"] == 0


@pytest.mark.slow
def test_an_eval_that_keeps_killing_its_pod_ends_failed_after_max_lost(tmp_path: Path) -> None:
    """An eval that OOM-kills its pod every time fails after --max-lost deaths while alone; the others complete."""
    (tmp_path / "set.txt").write_text("bad\ngood1\ngood2\n")
    journal = tmp_path / "journal"
    progress = str(tmp_path / "p.txt")
    command = fake_command(journal, "--sleep", "0.3", "--kill-parent", "bad")
    args = ["run", "m", "set.txt", "--progress", progress, "--command", command, "--jobs", "2", "--max-lost", "2"]
    deaths = 0
    for _ in range(10):
        proc = start_pod(args, tmp_path, tmp_path / "log")
        code = proc.wait(timeout=60)
        kill_fake_evals(journal)
        if code != -9:
            break
        deaths += 1
    assert code == 1
    assert deaths == 3  # once beside good1 (not counted), then twice alone
    state = open_store(progress).load()
    assert state.state("bad") is EvalState.FAILED
    assert state.of("bad")[-1].reason == "lost"
    assert state.state("good1") is EvalState.DONE
    assert state.state("good2") is EvalState.DONE


@pytest.mark.slow
@pytest.mark.parametrize("stagger", [0.0, 0.3])
def test_two_runs_at_once_never_exceed_max_attempts(tmp_path: Path, stagger: float) -> None:
    """Two concurrent runs with --max-attempts 2 run a failing eval at most twice, with distinct attempt
    numbers. A run that loads after the other's attempt began takes that attempt for lost, as after a
    pod death, until its record shows an end; the retry backoff gives the end time to arrive. Telling a
    live writer from a dead one at once needs the heartbeats of the many-pods work.
    """
    (tmp_path / "set.txt").write_text("x\n")
    journal = tmp_path / "journal"
    progress = str(tmp_path / "p.txt")
    command = fake_command(journal, "--sleep", "0.5", "--fail", "x")
    args = ["run", "m", "set.txt", "--progress", progress, "--command", command]
    args += ["--max-attempts", "2", "--retry-backoff", "2"]
    procs = [start_pod(args, tmp_path, tmp_path / "log0")]
    time.sleep(stagger)  # 0.3 s: the second run loads after the first one's attempt began
    procs.append(start_pod(args, tmp_path, tmp_path / "log1"))
    assert [p.wait(timeout=60) for p in procs] == [1, 1]
    numbers = [e[2] for e in journal_entries(journal) if e[0] == "start"]
    assert len(numbers) <= 2
    assert len(numbers) == len(set(numbers))
    assert open_store(progress).load().state("x") is EvalState.FAILED


def runner_for(tmp_path: Path, store: Any, names: tuple[str, ...], **plan: Any) -> tuple[Runner, Path]:
    journal = tmp_path / "journal"
    template = CommandTemplate.parse(fake_command(journal))
    console = Console(out=io.BytesIO(), err=io.StringIO(), bar=False)
    return Runner(RunPlan("m", EvalSet("s", names, "test"), template, **plan), store, console), journal


def test_a_log_that_cannot_be_saved_loses_no_completion(tmp_path: Path) -> None:
    """The outcome is recorded first; a failed log upload is a warning, and the eval stays done."""
    store = open_store(str(tmp_path / "p.txt"))
    failing = Wrapped(store.backend)

    def write(path: str, data: bytes) -> None:
        if "/logs/" in path:
            msg = "progress store: cannot write (simulated failed upload)"
            raise StoreError(msg)
        store.backend.inner.write(path, data)  # type: ignore[attr-defined]

    failing.write = write  # type: ignore[attr-defined]
    store.backend = failing  # type: ignore[assignment]
    runner, journal = runner_for(tmp_path, store, ("a", "b"))
    with capture_logs() as logs:
        summary = runner.run()
    assert summary.exit_code == 0
    assert sum(1 for e in logs if e["event"] == "eval.log_not_saved") == 2
    assert Counter(e[1] for e in journal_entries(journal) if e[0] == "start") == Counter({"a": 1, "b": 1})
    assert open_store(str(tmp_path / "p.txt")).load().state("a") is EvalState.DONE


def test_an_eval_with_a_very_long_name_completes_and_keeps_its_log(tmp_path: Path) -> None:
    """A name whose percent-encoded key exceeds 255 bytes runs, is recorded, and its log is saved."""
    name = "長い評価の名前" * 20
    (tmp_path / "set.txt").write_text(name + "\n")
    journal = tmp_path / "journal"
    progress = str(tmp_path / "p.txt")
    result = batchrun("run", "m", "set.txt", "--progress", progress, "--command", fake_command(journal), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    logs = batchrun("logs", "m", "set.txt", name, "--progress", progress, cwd=tmp_path)
    assert f"fake eval {name} attempt 1" in logs.stdout


def test_no_eval_starts_while_records_pile_up_unwritten(tmp_path: Path) -> None:
    """A store that stalls on writing records stalls the run too: evals don't pile up unrecorded."""
    store = open_store(str(tmp_path / "p.txt"))
    stalled = Wrapped(store.backend)
    release = threading.Event()
    events_written = 0

    def create(path: str, data: bytes, *, durable: bool) -> None:
        nonlocal events_written
        if "/events/" in path:
            events_written += 1
            if events_written > 1:
                assert release.wait(60)
        store.backend.inner.create(path, data, durable=durable)  # type: ignore[attr-defined]

    stalled.create = create  # type: ignore[attr-defined]
    store.backend = stalled  # type: ignore[assignment]
    runner, journal = runner_for(tmp_path, store, tuple(f"e{i:02d}" for i in range(30)))
    thread = threading.Thread(target=runner.run)
    thread.start()
    deadline = time.monotonic() + 20
    while events_written < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # time in which, before the fix, dozens of evals ran with no durable record
    ran = sum(1 for e in journal_entries(journal) if e[0] == "end")
    release.set()
    thread.join(60)
    # e00 (whose start was written), e01 (whose start is in the write that hangs) and at most one
    # more whose start is queued behind it; before the fix all 30 ran.
    assert ran <= 3
    assert open_store(str(tmp_path / "p.txt")).load().completed_order() == [f"e{i:02d}" for i in range(30)]


def test_start_up_reads_events_concurrently(tmp_path: Path) -> None:
    """Loading many unfolded events (left by repeated kills) reads them several at a time."""
    uri = str(tmp_path / "p.txt")
    for i in range(12):  # twelve writers (twelve killed pods), one event each
        open_store(uri).start(f"e{i}", 1)
    reader = open_store(uri)
    slow = Wrapped(reader.backend)
    active = 0
    most = 0
    lock = threading.Lock()

    def read(path: str) -> Any:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.1)
        with lock:
            active -= 1
        return reader.backend.inner.read(path)  # type: ignore[attr-defined]

    slow.read = read  # type: ignore[attr-defined]
    reader.backend = slow  # type: ignore[assignment]
    assert len(reader.load().attempts) == 12
    assert most > 1
    assert reader.pending_events == 12
