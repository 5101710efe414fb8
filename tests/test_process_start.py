"""How an attempt's process starts: its own session and process group, stdin from /dev/null,
stdout and stderr on pipes of their own, no fd of batchrun's but 0-2, and the errors a shell
would report as 127 and 126 (with nothing left open).
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from batchrun._console import Console
from batchrun._process import EvalProcess, Output

# What the child reports about itself, as one JSON line on stdout.
REPORT = (
    "import json, os, sys\n"
    "fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))\n"
    "print(json.dumps({'pid': os.getpid(), 'sid': os.getsid(0), 'pgid': os.getpgrp(),"
    " 'stdin': os.readlink('/proc/self/fd/0'), 'read': sys.stdin.read(), 'fds': fds}))\n"
    "print('to stderr', file=sys.stderr)\n"
    "sys.exit(3)\n"
)


@pytest.fixture
def inherited_fd() -> object:
    """An fd of batchrun's that a child would inherit (as from a launcher's `3>file`)."""
    read, write = os.pipe()
    os.set_inheritable(write, True)
    try:
        yield write
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.usefixtures("inherited_fd")
def test_eval_runs_alone_with_its_output_piped_and_inherits_no_fd_of_batchrun() -> None:
    """New session and group, stdin /dev/null, stdout and stderr read apart, an inheritable fd closed."""
    out, err = io.BytesIO(), io.BytesIO()
    console = Console(out, io.TextIOWrapper(err, write_through=True), bar=False)
    process = EvalProcess([sys.executable, "-c", REPORT], dict(os.environ))
    output = Output()
    assert process.pump(console, b"", output, None)
    assert process.reap() == 3
    assert not process.pipes  # both read to the end, and closed
    assert output.read().startswith(b"{")
    assert err.getvalue() == b"to stderr\n"
    report = json.loads(out.getvalue())
    assert report["sid"] == report["pid"]
    assert report["pgid"] == report["pid"]
    assert (report["stdin"], report["read"]) == (os.devnull, "")
    assert report["fds"] == [0, 1, 2, 3]  # 3: the child's listing of its fds


def test_a_program_that_is_missing_or_not_executable_raises_what_the_shell_reports_as_127_or_126(
    tmp_path: Path,
) -> None:
    """Missing (bare name or path): FileNotFoundError; a file without the x bit: PermissionError."""
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    for argv in (["no-such-program-anywhere"], [str(tmp_path / "missing")]):
        with pytest.raises(FileNotFoundError):
            EvalProcess(argv, dict(os.environ))
    with pytest.raises(PermissionError):
        EvalProcess([str(plain)], dict(os.environ))
    fds = set(Path("/proc/self/fd").iterdir())
    with pytest.raises(FileNotFoundError):
        EvalProcess(["no-such-program-anywhere"], dict(os.environ))
    assert set(Path("/proc/self/fd").iterdir()) <= fds  # the pipes of a start that failed are closed
