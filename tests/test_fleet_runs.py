"""Many `batchrun run` processes on one S3 store (moto), as real processes sent real signals:
random SIGKILLs with restarts, a stalled worker (SIGSTOP), two live processes with one worker id.
Each eval journals its start and end with the time and its batchrun's pid, so the tests can check
that no eval ran in two places at once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from helpers import BUCKET, batchrun

from batchrun.errors import EXIT_FENCED

pytestmark = pytest.mark.slow

EVAL_SCRIPT = """\
import os, signal, sys, time, zlib
name, attempt, journal = sys.argv[1], sys.argv[2], sys.argv[3]
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.1 + (zlib.crc32(name.encode()) % 31) / 100

def note(*words):
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (" ".join(map(str, words)) + "\\n").encode())
    os.close(fd)

def stopped(signum, frame):
    note("end", name, attempt, os.getppid(), os.getpid(), repr(time.time()))
    sys.exit(128 + signum)

signal.signal(signal.SIGTERM, stopped)
note("start", name, attempt, os.getppid(), os.getpid(), repr(time.time()))
time.sleep(seconds)
note("end", name, attempt, os.getppid(), os.getpid(), repr(time.time()))
"""


@dataclass
class Execution:
    eval: str
    parent: int
    pid: int
    start: float
    end: float | None = None


@dataclass
class Fleet:
    """Worker processes of one run, started and killed by the test."""

    tmp: Path
    env: dict[str, str]
    args: list[str]
    procs: dict[int, tuple[str, subprocess.Popen[bytes]]] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    killed: dict[int, float] = field(default_factory=dict)  # batchrun pid -> when it was killed

    def start(self, worker: str, *extra: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.logs)}-{worker}.log"
        self.logs.append(log)
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "batchrun", *self.args, "--worker-id", worker, *extra],
                env=self.env,
                cwd=self.tmp,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.procs[proc.pid] = (worker, proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker and the evals it runs, as a lost node does."""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed[proc.pid] = time.time()
        for execution in executions(self.tmp / "journal"):
            if execution.parent == proc.pid and execution.end is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(execution.pid, signal.SIGKILL)

    def events(self) -> list[dict[str, object]]:
        lines = [line for log in self.logs for line in log.read_text(errors="replace").splitlines()]
        return [json.loads(line) for line in lines if line.startswith("{")]


def executions(journal: Path) -> list[Execution]:
    runs: dict[int, Execution] = {}
    if not journal.exists():
        return []
    for line in journal.read_text().splitlines():
        kind, name, _attempt, parent, pid, when = line.split()
        if kind == "start":
            runs[int(pid)] = Execution(name, int(parent), int(pid), float(when))
        elif int(pid) in runs:
            runs[int(pid)].end = float(when)
    return list(runs.values())


def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll *condition* until it holds; fail with *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def make_fleet(tmp: Path, s3_env: dict[str, str], evals: list[str], *options: str, seconds: str = "") -> Fleet:
    (tmp / "set.txt").write_text("\n".join(evals) + "\n")
    (tmp / "ev.py").write_text(EVAL_SCRIPT)
    command = f"{sys.executable} {tmp / 'ev.py'} {{eval}} {{attempt}} {tmp / 'journal'} {seconds}".strip()
    progress = f"s3://{BUCKET}/fleet/m.set.progress.txt"
    args = ["run", "m", "set.txt", "--progress", progress, "--command", command, "--log-format", "json"]
    return Fleet(tmp, {**s3_env, "PYTHONUNBUFFERED": "1"}, [*args, *options])


def stored_lines() -> list[str]:
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key="fleet/m.set.progress.txt")["Body"].read()
    return body.decode().splitlines()


def status(fleet: Fleet) -> dict[str, object]:
    result = batchrun("status", "--progress", f"s3://{BUCKET}/fleet/m.set.progress.txt", "--json", env=fleet.env)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def overlaps(runs: list[Execution], killed: dict[int, float]) -> list[tuple[Execution, Execution]]:
    """Pairs of executions of one eval that overlap in time; a killed one ended when it was killed."""
    found = []
    by_eval: dict[str, list[Execution]] = {}
    for run in runs:
        by_eval.setdefault(run.eval, []).append(run)
    for same in by_eval.values():
        same.sort(key=lambda r: r.start)
        for first, second in itertools.pairwise(same):
            end = first.end if first.end is not None else killed.get(first.parent, float("inf"))
            if second.start < end:
                found.append((first, second))
    return found


def test_workers_killed_at_random_finish_the_set_once_without_overlap(s3_env: dict[str, str], tmp_path: Path) -> None:
    """6 workers, 120 evals, random SIGKILLs (restarts with the same id, or a fresh one, some on
    another host name): every eval is recorded done once, no eval ran in two places at once, and
    executions stay within evals + kills.
    """
    evals = [f"e{i:03d}" for i in range(120)]
    options = ["--jobs", "1", "--heartbeat", "0.3", "--worker-timeout", "1.5", "--retry-backoff", "0"]
    fleet = make_fleet(tmp_path, s3_env, evals, *options, "--max-lost", "20")
    unshare = shutil.which("unshare") if os.geteuid() == 0 else None
    rng = random.Random(int(os.environ.get("BATCHRUN_FLEET_SEED", "8")))
    for index in range(6):
        fleet.start(f"w{index}")
    kills = 0
    successors: list[tuple[Path, Path]] = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 1.0))
        live = [(w, p) for w, p in fleet.procs.values() if p.poll() is None]
        if not live:
            break
        if kills >= 10:
            continue
        worker, proc = rng.choice(live)
        killed_log = fleet.logs[[p.pid for _, p in fleet.procs.values()].index(proc.pid)]
        fleet.kill(proc)
        kills += 1
        choice = rng.random()
        if choice < 0.6:
            fleet.start(worker)  # the same index's replacement pod: takes the id over at once
            successors.append((killed_log, fleet.logs[-1]))
        elif choice < 0.8 or unshare is None:
            fleet.start(f"{worker}-fresh{kills}")  # the dead worker's evals go after the timeout
        else:  # a pod on another host: its death is learnt from the timeout only
            host = ["sh", "-c", f'hostname other{kills} && exec "$@"', "sh"]
            fleet.start(f"{worker}-elsewhere{kills}", prefix=(unshare, "--uts", *host))
    else:
        pytest.fail("the fleet did not finish in time")
    codes = [p.returncode for pid, (_, p) in fleet.procs.items() if pid not in fleet.killed]
    assert codes, "some worker should have finished"
    assert all(code == 0 for code in codes), codes

    lines = stored_lines()
    assert sorted(lines) == evals, f"{len(lines)} lines, {len(set(lines))} distinct"
    report = status(fleet)
    assert (report["done"], report["total"]) == (120, 120)
    runs = executions(tmp_path / "journal")
    assert not overlaps(runs, fleet.killed), overlaps(runs, fleet.killed)[:3]
    assert len(runs) <= len(evals) + kills, f"{len(runs)} executions for {len(evals)} evals and {kills} kills"
    events = fleet.events()
    assert kills >= 5
    # The dead workers' evals were taken: by a successor with the same id at once, by others otherwise.
    killed_logs = {fleet.logs[i] for i, pid in enumerate(fleet.procs) if pid in fleet.killed}
    for killed_log, successor_log in successors:  # a successor takes over every id that had joined
        if '"run.started"' in killed_log.read_text(errors="replace") and successor_log not in killed_logs:
            assert '"worker.took_over"' in successor_log.read_text(errors="replace"), successor_log
    if any("fresh" in str(e.get("worker")) or "elsewhere" in str(e.get("worker")) for e in events):
        assert any(e["event"] == "worker.declared_dead" for e in events)


def test_a_stalled_worker_loses_its_evals_and_records_nothing_after_it_resumes(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGSTOP stops a worker's heartbeat, not its eval: others take its eval after the timeout;
    on SIGCONT it finds it was declared dead, stops, writes nothing, and exits 75.
    """
    # Four evals of 1 s: the other worker runs its three (3 s, past the 1.5 s timeout) before it
    # reaches the stalled worker's, and declares that worker dead then.
    evals = [f"e{i:02d}" for i in range(4)]
    options = ["--jobs", "1", "--heartbeat", "0.3", "--worker-timeout", "1.5", "--grace", "1"]
    fleet = make_fleet(tmp_path, s3_env, evals, *options, seconds="1.0")
    stalled = fleet.start("a")
    journal = tmp_path / "journal"
    until(lambda: any(r.parent == stalled.pid for r in executions(journal)), "the worker never started an eval")
    stalled.send_signal(signal.SIGSTOP)
    stopped_at = time.time()
    (held,) = [r.eval for r in executions(journal) if r.parent == stalled.pid]
    other = fleet.start("b")
    until(
        lambda: any(r.eval == held and r.parent == other.pid for r in executions(journal)),
        "the stalled worker's eval was never taken",
    )
    stalled.send_signal(signal.SIGCONT)
    assert stalled.wait(timeout=30) == EXIT_FENCED
    assert other.wait(timeout=60) == 0
    stderr = fleet.logs[0].read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("batchrun: error:")]
    assert len(errors) == 1
    assert "declared dead" in errors[0]
    assert "Traceback" not in stderr  # e.g. from a log saved in the background after the fence
    assert all(line.startswith(("{", "batchrun: error:")) for line in stderr.splitlines() if line), stderr[-2000:]
    assert "worker 'b'" in errors[0]

    assert sorted(stored_lines()) == evals
    writer = next(e["writer"] for e in fleet.events() if e["event"] == "run.started" and e["worker"] == "a")
    from helpers import open_store

    state = open_store(f"s3://{BUCKET}/fleet/m.set.progress.txt").load()
    late = [a for a in state.all_attempts() if a.id.startswith(f"{writer}-") and (a.ended_at or 0) > stopped_at]
    assert late == [], late


def test_two_live_processes_with_one_worker_id_never_run_an_eval_at_once(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """The newer process takes the id over; the older one stops its evals (interrupted), exits 75
    naming its successor; the successor waits for those evals to stop before it runs them.
    """
    evals = [f"e{i:02d}" for i in range(6)]
    options = ["--jobs", "2", "--heartbeat", "0.3", "--worker-timeout", "1.5", "--grace", "1"]
    fleet = make_fleet(tmp_path, s3_env, evals, *options, seconds="1.5")
    older = fleet.start("same")
    journal = tmp_path / "journal"
    until(lambda: sum(1 for r in executions(journal) if r.parent == older.pid) >= 2, "two evals never started")
    newer = fleet.start("same")
    assert older.wait(timeout=30) == EXIT_FENCED
    assert newer.wait(timeout=90) == 0
    stderr = fleet.logs[0].read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("batchrun: error:")]
    assert len(errors) == 1
    assert f"(pid {newer.pid})" in errors[0]
    assert "taken over" in errors[0]
    assert sorted(stored_lines()) == evals
    runs = executions(journal)
    assert not overlaps(runs, {}), overlaps(runs, {})
    assert {r.eval for r in runs if r.parent == older.pid} <= {r.eval for r in runs if r.parent == newer.pid} | set(
        evals
    )
