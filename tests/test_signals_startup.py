"""Signals from outside: dispositions and masks a launcher leaves behind, SIGHUP (a closed
terminal), and stop signals while the store is still being reached at start-up.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BUCKET, aws_env, batchrun, fake_command, free_port, wait_for

from batchrun._signals import StopRequest
from batchrun.errors import StoppedError

pytestmark = pytest.mark.slow

# Sets the named signals' dispositions and mask as a careless launcher would, then execs batchrun.
LAUNCHER = """
import os, signal, sys
ignore, default, block, *args = sys.argv[1:]
for name in filter(None, ignore.split(",")):
    signal.signal(signal.Signals["SIG" + name], signal.SIG_IGN)
for name in filter(None, default.split(",")):
    signal.signal(signal.Signals["SIG" + name], signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.Signals["SIG" + n] for n in filter(None, block.split(","))})
os.execv(sys.executable, [sys.executable, "-m", "batchrun", *args])
"""


def launch(
    cwd: Path, *args: str, ignore: str = "", default: str = "HUP", block: str = "", env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start `batchrun ARGS` through the launcher (SIGHUP at its default unless told otherwise)."""
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, ignore, default, block, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_args(tmp_path: Path, *args: str) -> tuple[str, ...]:
    return ("run", "m", "s.txt", "--progress", progress(tmp_path), "--log-format", "json", *args)


def progress(tmp_path: Path) -> str:
    return str(tmp_path / "progress" / "m.s.progress.txt")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def status(tmp_path: Path) -> dict[str, dict[str, object]]:
    result = batchrun("status", "--progress", progress(tmp_path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return {e["name"]: e for e in json.loads(result.stdout)["evals"]}


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def handles(pid: int, signum: signal.Signals) -> bool:
    """Whether process *pid* has a handler installed for *signum* (SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def wait_until_handled(proc: subprocess.Popen[str], signum: signal.Signals, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not handles(proc.pid, signum):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"batchrun installed no {signum.name} handler"
        time.sleep(0.01)


@pytest.fixture
def evalset(tmp_path: Path) -> Path:
    (tmp_path / "s.txt").write_text("first\nsecond\n")
    return tmp_path


# --- inherited dispositions and masks -----------------------------------------------------


def test_failed_eval_is_recorded_failed_when_the_launcher_ignored_sigchld(evalset: Path) -> None:
    """SIGCHLD ignored by whatever exec'd batchrun: an eval that exits 3 is still recorded failed."""
    journal = evalset / "journal"
    proc = launch(
        evalset, *run_args(evalset, "--command", fake_command(journal, "--fail", "first"), "--max-attempts", "1"),
        ignore="CHLD",
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    report = status(evalset)
    assert (report["first"]["state"], report["first"]["exit_code"]) == ("failed", 3)
    assert report["second"]["state"] == "done"


def test_evals_get_no_blocked_or_ignored_signal_from_the_launcher(evalset: Path) -> None:
    """A mask and ignored signals a launcher left are not passed on: evals start with neither."""
    (evalset / "s.txt").write_text("first\n")
    proc = launch(
        evalset, *run_args(evalset, "--command", "cat /proc/self/status"),
        ignore="HUP,QUIT,USR1,USR2,PIPE,XFSZ", default="", block="TERM,INT,HUP,USR1,QUIT",
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    logs = batchrun("logs", "m", "s", "first", "--progress", progress(evalset), cwd=evalset)
    fields = dict(line.split(":\t", 1) for line in logs.stdout.splitlines() if line.startswith("Sig"))
    assert (fields["SigBlk"], fields["SigIgn"]) == ("0" * 16, "0" * 16)


def test_sigterm_blocked_by_the_launcher_still_stops_the_run(evalset: Path) -> None:
    """A SIGTERM the launcher left blocked is unblocked: batchrun stops in order and exits 143."""
    journal = evalset / "journal"
    proc = launch(
        evalset, *run_args(evalset, "--command", fake_command(journal, "--sleep", "60"), "--grace", "2"),
        block="TERM",
    )  # fmt: skip
    pid = int(wait_for(journal, "start")[0][3])
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert not alive(pid)


# --- SIGHUP -------------------------------------------------------------------------------


def test_sighup_stops_the_run_in_order_and_exits_129(evalset: Path) -> None:
    """Closing the terminal: evals and their children are stopped, attempts recorded interrupted, exit 129."""
    journal = evalset / "journal"
    command = fake_command(journal, "--sleep", "60", "--child")
    proc = launch(evalset, *run_args(evalset, "--command", command, "--jobs", "2", "--grace", "3"))
    leaders = [int(e[3]) for e in wait_for(journal, "start", 2)]
    children = [int(e[2]) for e in wait_for(journal, "child", 2)]
    proc.send_signal(signal.SIGHUP)
    try:
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 129, stderr
    assert not any(alive(pid) for pid in leaders + children)
    log = events(stderr)
    assert (log[-1]["event"], log[-1]["signal"]) == ("run.interrupted", "SIGHUP")
    report = status(evalset)
    assert {n: (e["state"], e["attempts"], e["interrupted"]) for n, e in report.items()} == dict.fromkeys(
        ["first", "second"], ("pending", 0, 1)
    )


def test_sighup_ignored_on_entry_stays_ignored_but_evals_can_still_be_stopped_with_it(evalset: Path) -> None:
    """Under nohup, SIGHUP does not stop batchrun, yet an eval sent --stop-signal HUP dies of it."""
    journal = evalset / "journal"
    command = fake_command(journal, "--sleep", "60")
    proc = launch(
        evalset, *run_args(evalset, "--command", command, "--stop-signal", "HUP", "--grace", "60"),
        ignore="HUP", default="",
    )  # fmt: skip
    wait_for(journal, "start")
    wait_until_handled(proc, signal.SIGTERM)
    proc.send_signal(signal.SIGHUP)  # ignored: the SIGTERM that follows is what stops the run
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=30)  # well under --grace: the eval died of SIGHUP at once
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert [e["exit_code"] for e in events(stderr) if e["event"] == "eval.interrupted"] == [-signal.SIGHUP]


# --- a signal the kernel gives to another thread ------------------------------------------


def test_a_stop_signal_given_to_another_thread_reaches_a_main_thread_in_an_untimed_wait() -> None:
    """CPython runs handlers in the main thread only: a signal taken by another thread still stops."""
    stop = StopRequest()
    stop.install()
    stopped, late = threading.Event(), threading.Event()
    stop.on_stop(stopped.set)
    other = threading.Thread(target=select.select, args=([], [], [], 30), daemon=True)  # as a pump waits
    other.start()
    safety = threading.Timer(20, lambda: (late.set(), stopped.set()))
    safety.start()
    try:
        threading.Timer(0.2, signal.pthread_kill, (other.ident, signal.SIGTERM)).start()
        stopped.wait()  # untimed, like a runner waiting for its evals
    finally:
        safety.cancel()
        stop.restore()
    assert not late.is_set(), "the stop was seen only when the main thread woke up for another reason"
    assert stop.signum == signal.SIGTERM


def signal_soon_then_wait(other: threading.Thread, blocker: threading.Event) -> None:
    """SIGTERM to *other* in a moment, while this (main) thread waits untimed, as a store call may."""
    threading.Timer(0.2, signal.pthread_kill, (other.ident, signal.SIGTERM)).start()
    blocker.wait()


def test_a_stop_signal_given_to_another_thread_during_start_up_raises_in_the_main_thread() -> None:
    """During start-up the main thread, even in an untimed wait, leaves it with StoppedError."""
    stop = StopRequest()
    stop.install(raising=True)
    blocker, late = threading.Event(), threading.Event()
    other = threading.Thread(target=select.select, args=([], [], [], 30), daemon=True)
    other.start()
    safety = threading.Timer(20, lambda: (late.set(), blocker.set()))
    safety.start()
    try:
        with pytest.raises(StoppedError) as raised:
            signal_soon_then_wait(other, blocker)
    finally:
        safety.cancel()
        blocker.set()
        stop.restore()
    assert not late.is_set()
    assert (raised.value.exit_code, str(raised.value)) == (
        143,
        "stopped by SIGTERM during start-up, before any eval ran",
    )


# --- stop signals during start-up ---------------------------------------------------------


@pytest.fixture
def black_hole() -> Iterator[tuple[str, threading.Event]]:
    """An endpoint that accepts connections and never answers; the event is set at the first one."""
    server = socket.create_server(("127.0.0.1", 0))
    connected = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return
            connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", connected
    server.close()
    for conn in held:
        conn.close()


def s3_run(tmp_path: Path, endpoint: str) -> subprocess.Popen[str]:
    (tmp_path / "s.txt").write_text("first\n")
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", "m", "s.txt", "--progress", f"s3://{BUCKET}/runs/m.s.progress.txt",
         "--command", fake_command(tmp_path / "journal"), "--log-format", "json"],
        cwd=tmp_path, env={**os.environ, **aws_env(endpoint)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_sigint_during_start_up_against_an_unreachable_store_exits_130_at_once(tmp_path: Path) -> None:
    """Ctrl-C while the store is being retried ends the run with 130 and one line, not after the retries."""
    proc = s3_run(tmp_path, f"http://127.0.0.1:{free_port()}")
    wait_until_handled(proc, signal.SIGTERM)  # the stop handlers are in place: start-up has begun
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    elapsed = time.monotonic() - signalled
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        "batchrun: error: stopped by SIGINT during start-up, before any eval ran"
    ), stderr
    assert "Traceback" not in stderr
    assert elapsed < 5, f"{elapsed:.1f} s"  # generous; the retries alone took 6.5-12 s
    assert not (tmp_path / "journal").exists()


def test_sigterm_while_the_store_does_not_answer_exits_143_at_once(
    tmp_path: Path, black_hole: tuple[str, threading.Event]
) -> None:
    """SIGTERM while a request to the store hangs: exit 143 at once, not when the request times out."""
    endpoint, connected = black_hole
    proc = s3_run(tmp_path, endpoint)
    try:
        assert connected.wait(30), "batchrun never reached the store"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    elapsed = time.monotonic() - signalled
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM during start-up" in stderr
    assert elapsed < 10, f"{elapsed:.1f} s"  # generous; botocore alone waits 60 s for a reply
