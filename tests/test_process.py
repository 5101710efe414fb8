"""One attempt's process and its output: lines that never end (progress bars redrawn with a
carriage return) and helpers that keep the output pipes open after the eval exited.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import batchrun, fake_command, journal_entries

from batchrun import _process
from batchrun._console import Console
from batchrun._process import LINE_LIMIT_BYTES, EvalProcess, Output

CR_BYTES = 1200 * 17_000  # 1,200,000 progress-bar redraws of 17 bytes, no newline: 20 MB


def console() -> tuple[Console, io.BytesIO, io.BytesIO]:
    """A console writing to memory: (console, stdout bytes, stderr bytes)."""
    out, err = io.BytesIO(), io.BytesIO()
    return Console(out, io.TextIOWrapper(err, write_through=True), bar=False), out, err


@contextlib.contextmanager
def leaked(pids: list[int]) -> Iterator[None]:
    """Kill the helpers a test's evals left running in sessions of their own."""
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_pump_passes_a_line_that_never_ends_on_in_bounded_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 MB without a newline: no piece held or written exceeds the line limit, and the log cap holds."""
    monkeypatch.setattr(_process, "LOG_LIMIT_BYTES", 2**20)
    script = (
        "import sys; update = b''.join(b'progress %6d%%\\r' % n for n in range(1000)); left = "
        f"{CR_BYTES}\nwhile left > 0: left -= sys.stdout.buffer.write(update[:left])\n"
        "sys.stdout.buffer.write(b'100%: done')"
    )
    con, out, _ = console()
    output = Output()
    process = EvalProcess([sys.executable, "-c", script], dict(os.environ))
    assert process.pump(con, b"", output, None)
    assert process.reap() == 0
    lines = out.getvalue().split(b"\n")[:-1]
    assert max(len(line) for line in lines) <= LINE_LIMIT_BYTES
    assert sum(map(len, lines)) == CR_BYTES + len(b"100%: done")
    assert all(line.endswith(b"\r") for line in lines[:-1])  # cut where a redraw begins
    log = output.read()
    assert log == b"".join(lines)[: 2**20] + _process._TRUNCATED  # noqa: SLF001 - the note itself
    assert list(output.tail)[-1] == "100%: done"


def test_output_tail_keeps_what_a_terminal_shows_of_a_redrawn_line() -> None:
    """A line redrawn with carriage returns is kept in the tail as its last redraw, across pieces."""
    output = Output()
    output.add(b"first line\n")
    output.add(b"10%\r20%\r30%\r\n")
    output.add(b"loading: 1")
    output.add(b"0%\r20")
    output.add(b"%\r100%\n")
    output.add(b"last: 1")
    output.add(b"Traceback (most recent call last):\n", stderr=True)  # the other stream: a line of its own
    output.add(b"0%\r80%")
    assert list(output.tail) == ["first line", "30%", "100%", "last: 1", "Traceback (most recent call last):", "80%"]
    assert output.read() == (
        b"first line\n10%\r20%\r30%\r\nloading: 10%\r20%\r100%\nlast: 1Traceback (most recent call last):\n0%\r80%"
    )


def test_pump_stops_reading_soon_after_the_leader_exits_while_a_helper_holds_the_pipes() -> None:
    """A helper in a session of its own keeps the pipes open: the pump returns after the drain period."""
    script = (
        "import subprocess, sys\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "print(helper.pid, flush=True)"
    )
    con, out, _ = console()
    output = Output()
    process = EvalProcess([sys.executable, "-c", script], dict(os.environ))
    started = time.monotonic()
    in_time = process.pump(con, b"", output, started + 30)
    helper = int(out.getvalue().split()[0])
    with leaked([helper]):
        assert in_time, "the pump waited for the helper until the deadline"
        assert process.reap() == 0
        assert Path(f"/proc/{helper}").exists()  # the helper still runs: only the pipes were given up
        assert output.read() == f"{helper}\n".encode()


def test_eval_timeout_does_not_fail_an_eval_that_exited_while_a_helper_held_its_output(tmp_path: Path) -> None:
    """An eval exits 0 at once but leaves a helper holding its output: recorded completed, not timed out."""
    (tmp_path / "s.txt").write_text("first\n")
    journal = tmp_path / "journal"
    progress = str(tmp_path / "progress" / "m.s.progress.txt")
    command = fake_command(journal, "--leak-pipe")
    try:
        result = batchrun(
            "run", "m", "s.txt", "--progress", progress, "--command", command, "--eval-timeout", "10",
            "--max-attempts", "1", "--log-format", "json", cwd=tmp_path,
        )  # fmt: skip
    finally:
        pids = [int(e[2]) for e in journal_entries(journal) if e[0] == "leak"]
        with leaked(pids):
            pass
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["event"].startswith("eval.")] == ["eval.started", "eval.completed"]
    status = batchrun("status", "--progress", progress, "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["evals"][0]["state"] == "done"


def test_sigterm_stops_in_time_while_a_helper_holds_an_eval_output(tmp_path: Path) -> None:
    """SIGTERM while a helper outside the eval's group holds its pipes: exit 143 within the grace, not 60 s."""
    (tmp_path / "s.txt").write_text("first\n")
    journal = tmp_path / "journal"
    progress = str(tmp_path / "progress" / "m.s.progress.txt")
    command = fake_command(journal, "--leak-pipe", "--sleep", "60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", "m", "s.txt", "--progress", progress, "--command", command,
         "--grace", "2", "--log-format", "json"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pids: list[int] = []
    with leaked(pids):
        deadline = time.monotonic() + 30
        while not pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids[:] = [int(e[2]) for e in journal_entries(journal) if e[0] == "leak"]
        assert pids, "the eval did not start its helper"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=2 + 10)
        finally:
            proc.kill()
        elapsed = time.monotonic() - signalled
    assert proc.returncode == 143, stderr
    assert elapsed < 2 + 10  # generous: grace 2 s + drain 1 s; it took 60 s when batchrun waited for EOF


def test_run_with_a_progress_bar_that_never_ends_its_line_completes_and_keeps_its_output(tmp_path: Path) -> None:
    """20 MB of carriage-return redraws: the run ends, the saved log is whole (under the cap), the tail right."""
    (tmp_path / "s.txt").write_text("first\n")
    journal = tmp_path / "journal"
    progress = str(tmp_path / "progress" / "m.s.progress.txt")
    command = fake_command(journal, "--print-cr", str(CR_BYTES), "--fail", "first")
    result = batchrun(
        "run", "m", "s.txt", "--progress", progress, "--command", command, "--max-attempts", "1",
        "--log-format", "json", cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    logs = subprocess.run(
        [sys.executable, "-m", "batchrun", "logs", "m", "s", "first", "--progress", progress],
        cwd=tmp_path, capture_output=True, check=True,
    )  # fmt: skip
    assert len(logs.stdout) <= _process.LOG_LIMIT_BYTES + len(_process._TRUNCATED)  # noqa: SLF001
    assert logs.stdout.startswith(b"fake eval first attempt 1")
    assert logs.stdout.endswith(b"progress    999%\r100%: done")
    assert len(logs.stdout) > CR_BYTES
    status = batchrun("status", "--progress", progress, "--json", cwd=tmp_path)
    first = json.loads(status.stdout)["evals"][0]
    assert (first["state"], first["last_output"][-1]) == ("failed", "100%: done")
