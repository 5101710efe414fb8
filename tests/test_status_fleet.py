"""`status` shows the fleet: running evals with their worker, the workers themselves, and `--watch`."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import BUCKET, batchrun, fake_command, kill_fake_evals, open_store

from batchrun._heartbeat import Heartbeat
from batchrun._state import Attempt, Outcome, RunState
from batchrun.status import CLEAR_SCREEN, Frames, build_report, watch

FAST = ("--heartbeat", "0.5", "--worker-timeout", "2")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A progress URI on the local disk or on the moto S3 server, and the env a subprocess needs."""
    if request.param == "s3":
        env: dict[str, str] = request.getfixturevalue("s3_env")
        return f"s3://{BUCKET}/runs/{tmp_path.name}/m.s.progress.txt", env
    return str(tmp_path / "progress" / "m.s.progress.txt"), {**os.environ, "PYTHONUNBUFFERED": "1"}


def start_run(
    tmp_path: Path, uri: str, env: dict[str, str], *flags: str, evals: str = "slow\n"
) -> subprocess.Popen[bytes]:
    """`batchrun run` as worker w1 in the background, its fake evals sleeping as *flags* say."""
    (tmp_path / "s.txt").write_text(evals)
    command = fake_command(tmp_path / "journal", *flags)
    args = ["run", "m", "s.txt", "--progress", uri, "--command", command, "--worker-id", "w1", *FAST]
    with (tmp_path / "run.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "batchrun", *args, "--log-format", "json"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def report(tmp_path: Path, uri: str, env: dict[str, str]) -> dict[str, Any]:
    """`status --json` as a dict."""
    result = batchrun("status", "--progress", uri, "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def report_when(
    tmp_path: Path, uri: str, env: dict[str, str], ready: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    """The first `status --json` report for which *ready* holds; the test fails after *timeout* s."""
    deadline = time.monotonic() + timeout
    got: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = batchrun("status", "--progress", uri, "--json", env=env, cwd=tmp_path)
        if result.returncode == 0:  # until the run wrote its identity: exit 2, no progress there
            got = json.loads(result.stdout)
            if ready(got):
                return got
        time.sleep(0.1)
    run_log = (tmp_path / "run.log").read_text()[-3000:]
    pytest.fail(f"no status as expected after {timeout} s; the last: {got or result.stderr}\nrun log: {run_log}")


def evals_of(got: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in got["evals"]}


@pytest.fixture
def run_killer(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Runs a test starts; any still running at its end are killed with their evals."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kill_fake_evals(tmp_path / "journal")


def test_a_running_eval_shows_its_worker_and_the_workers_section_lists_it(
    store: tuple[str, dict[str, str]], tmp_path: Path, run_killer: list[subprocess.Popen[bytes]]
) -> None:
    """While w1 runs an eval, status shows it running on w1 (table and JSON) and lists w1 with its
    host and running eval; once w1 stopped (in order, on SIGTERM), nothing is running and no worker
    is listed.
    """
    uri, env = store
    proc = start_run(tmp_path, uri, env, "--sleep", "60", evals="slow\nnext\n")
    run_killer.append(proc)

    def slow_running(got: dict[str, Any]) -> bool:
        return got["running"] == 1 and bool(got["workers"]) and got["workers"][0]["running"] == ["slow"]

    got = report_when(tmp_path, uri, env, slow_running)
    assert (got["done"], got["failed"], got["running"], got["pending"]) == (0, 0, 1, 1)
    slow, nxt = evals_of(got)["slow"], evals_of(got)["next"]
    assert (slow["state"], slow["worker"], slow["attempts"]) == ("running", "w1", 1)
    assert 0 <= slow["last_seen_s"] < 3
    assert nxt == {"name": "next", "state": "pending", "attempts": 0, "interrupted": 0}
    [w1] = got["workers"]
    assert w1["last_seen_s"] < 3
    assert {k: w1[k] for k in ("id", "host", "state", "running", "completed")} == {
        "id": "w1",
        "host": socket.gethostname(),
        "state": "live",
        "running": ["slow"],
        "completed": 0,
    }

    text = batchrun("status", "--progress", uri, env=env, cwd=tmp_path).stdout
    lines = text.splitlines()
    assert any(line.startswith("slow  running") and "on w1, last seen" in line for line in lines), text
    assert "total 2: 0 done, 0 failed, 1 running, 1 pending" in lines
    assert "workers: 1 live" in lines
    assert any(line.split()[:3] == ["w1", socket.gethostname(), "live"] and line.endswith("slow") for line in lines)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    got = report(tmp_path, uri, env)
    assert (got["done"], got["running"], got["pending"], got["workers"]) == (0, 0, 2, [])
    assert evals_of(got)["slow"] == {"name": "slow", "state": "pending", "attempts": 0, "interrupted": 1}
    assert "workers:" not in batchrun("status", "--progress", uri, env=env, cwd=tmp_path).stdout


def test_a_stalled_worker_keeps_its_eval_running_and_a_dead_one_leaves_it_pending(
    tmp_path: Path, run_killer: list[subprocess.Popen[bytes]]
) -> None:
    """A stopped worker (SIGSTOP) is shown stalled with a growing age and its eval still running; once
    killed, its process is gone from this host, so it is shown dead and its eval pending, lost with
    w1; a worker that declared it dead is named in its note.
    """
    uri, env = str(tmp_path / "p.txt"), {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = start_run(tmp_path, uri, env, "--sleep", "60")
    run_killer.append(proc)
    # Stop it once it has beaten at least twice (0.5 s apart), which shows its interval.
    report_when(tmp_path, uri, env, lambda got: got["running"] == 1 and got["workers"][0]["running"] == ["slow"])
    time.sleep(1.5)
    proc.send_signal(signal.SIGSTOP)
    got = report_when(tmp_path, uri, env, lambda got: got["workers"][0]["state"] == "stalled")
    assert evals_of(got)["slow"]["state"] == "running"
    age = evals_of(got)["slow"]["last_seen_s"]
    assert age > 3 * 0.5  # three heartbeats missed, at least
    time.sleep(0.5)
    later = report(tmp_path, uri, env)
    assert (later["running"], later["workers"][0]["state"]) == (1, "stalled")
    assert evals_of(later)["slow"]["last_seen_s"] > age
    assert "stalled" in batchrun("status", "--progress", uri, env=env, cwd=tmp_path).stdout

    proc.kill()
    proc.wait()
    kill_fake_evals(tmp_path / "journal")
    got = report(tmp_path, uri, env)
    assert (got["running"], got["pending"]) == (0, 1)
    assert evals_of(got)["slow"] == {
        "name": "slow",
        "state": "pending",
        "attempts": 1,
        "interrupted": 0,
        "lost_with": "w1",
    }
    [w1] = got["workers"]
    assert (w1["id"], w1["state"], w1["running"]) == ("w1", "dead", [])
    assert w1["note"] == f"process {proc.pid} is gone from this host"
    text = batchrun("status", "--progress", uri, env=env, cwd=tmp_path).stdout
    assert "last attempt lost with worker w1" in text

    # Another worker declares w1 dead (status itself never does): the note says who and why.
    other = open_store(uri).fleet("w2", 0.5, 2.0)
    other.join(grace=0)
    deadline = time.monotonic() + 10
    while other.holds("w1", "whoever"):  # w2 finds w1's process gone once it has read its heartbeat
        assert time.monotonic() < deadline, "w2 never declared w1 dead"
        time.sleep(0.2)
    got = report(tmp_path, uri, env)
    workers = {w["id"]: w for w in got["workers"]}
    assert workers["w1"]["state"] == "dead"
    assert workers["w1"]["note"].startswith("declared dead")
    assert "by worker 'w2': its process is gone from this host" in workers["w1"]["note"]
    assert workers["w2"]["state"] == "live"
    assert evals_of(got)["slow"]["lost_with"] == "w1"
    other.leave()
    assert [w["id"] for w in report(tmp_path, uri, env)["workers"]] == ["w1"]


@pytest.fixture
def finished(tmp_path: Path) -> str:
    """A local store of a finished run of two evals."""
    (tmp_path / "s.txt").write_text("a\nb\n")
    uri = str(tmp_path / "p.txt")
    command = fake_command(tmp_path / "journal")
    result = batchrun("run", "m", "s.txt", "--progress", uri, "--command", command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return uri


def watch_until_ctrl_c(tmp_path: Path, uri: str, *flags: str, frames: int = 3) -> tuple[int, str, str]:
    """`status --watch --interval 0.2 FLAGS` writing to a file; SIGINT once *frames* frames are out."""
    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        args = ["status", "--progress", uri, "--watch", "--interval", "0.2", *flags]
        proc = subprocess.Popen([sys.executable, "-m", "batchrun", *args], stdout=stdout, stderr=stderr, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while out.read_text().count('"total": 2' if "--json" in flags else "total 2:") < frames:
            assert time.monotonic() < deadline, out.read_text()
            assert proc.poll() is None, err.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
    finally:
        proc.kill()
    return code, out.read_text(), err.read_text()


def test_watch_redraws_every_interval_until_ctrl_c_and_exits_0(tmp_path: Path, finished: str) -> None:
    """`status --watch` off a terminal prints a frame per interval, an empty line between frames,
    and ends on Ctrl-C with exit 0, a newline and nothing on stderr.
    """
    code, out, err = watch_until_ctrl_c(tmp_path, finished)
    assert (code, err) == (0, "")
    assert CLEAR_SCREEN not in out
    frame = batchrun("status", "--progress", finished, cwd=tmp_path).stdout
    blocks = out.split("\n\n")
    assert len(blocks) >= 3
    assert all(block + "\n" == frame for block in blocks[:-1])
    assert blocks[-1] == "" or blocks[-1] + "\n" == frame  # SIGINT after the newline or mid-frame


def test_watch_json_prints_one_object_per_line(tmp_path: Path, finished: str) -> None:
    """`status --watch --json` prints one whole JSON report per line and per refresh, nothing else."""
    code, out, err = watch_until_ctrl_c(tmp_path, finished, "--json")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) >= 3
    reports = [json.loads(line) for line in lines]
    assert all((r["done"], r["running"], r["workers"]) == (2, 0, []) for r in reports)  # the run ended


def test_watch_on_a_terminal_clears_the_screen_before_each_frame(tmp_path: Path, finished: str) -> None:
    """On a terminal, `status --watch` clears the screen before each frame; Ctrl-C exits 0."""
    primary, secondary = pty.openpty()
    args = ["status", "--progress", finished, "--watch", "--interval", "0.2"]
    with (tmp_path / "watch.err").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun", *args], stdout=secondary, stderr=stderr, cwd=tmp_path
        )
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while seen.count(CLEAR_SCREEN.encode()) < 3:
            assert time.monotonic() < deadline, seen
            if select.select([primary], [], [], 0.5)[0]:
                seen += os.read(primary, 65536)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        os.close(primary)
    assert (tmp_path / "watch.err").read_text() == ""
    frames = seen.decode().replace("\r\n", "\n").split(CLEAR_SCREEN)
    assert frames[0] == ""
    assert all(f.startswith("m / s  (") and "total 2: 2 done" in f for f in frames[1:3])


def test_watch_draws_the_number_of_frames_asked_for() -> None:
    """watch() with a frame limit draws that many frames, sleeping the interval between them."""
    out, drawn = io.StringIO(), iter(["one", "two", "three"])
    started = time.monotonic()
    watch(lambda: next(drawn), interval=0.1, style=Frames.BLOCKS, out=out, frames=2)
    assert out.getvalue() == "one\n\ntwo\n"
    assert 0.1 <= time.monotonic() - started < 5
    out = io.StringIO()
    watch(lambda: "x", interval=0, style=Frames.SCREEN, out=out, frames=2)
    assert out.getvalue() == f"{CLEAR_SCREEN}x\n{CLEAR_SCREEN}x\n"


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf"])
def test_watch_refuses_an_interval_that_is_not_a_positive_number(tmp_path: Path, interval: str) -> None:
    """`status --watch --interval 0` (or negative, nan, inf) is a usage error, exit 2."""
    result = batchrun("status", "--progress", str(tmp_path / "p.txt"), "--watch", "--interval", interval)
    assert result.returncode == 2
    assert "--interval must be a positive number of seconds" in result.stderr


def test_the_workers_table_agrees_with_the_records_not_a_stale_heartbeat() -> None:
    """A heartbeat is up to --heartbeat seconds old: its running evals and completions may lag the
    records, which status shows for the evals (newcomer walk: 'running: -' beside running evals).
    """
    now = time.time()
    beat = Heartbeat("w1", "x1", 1, "live", "elsewhere", 1, beat=2, at=now - 1, started_at=now - 3, running=("a",))
    state = RunState()
    state.add(Attempt("x1-1", "a", 1, "w1", now - 2).finished(Outcome.COMPLETED, exit_code=0))
    state.add(Attempt("x1-2", "b", 1, "w1", now - 1))
    report = build_report("m", "s", "p", ("a", "b", "c"), state, workers=[beat], now=now)
    assert [(w.running, w.completed) for w in report.workers] == [(("b",), 1)]
    assert [(e.name, e.worker) for e in report.evals] == [("a", None), ("b", "w1"), ("c", None)]  # b runs on w1
