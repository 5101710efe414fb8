"""Where batchrun's output meets the evals': a reader that goes away (`| head`, a closed
terminal) and eval output that tries to pass for batchrun's JSON log lines.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import batchrun, fake_command

from batchrun._console import Console, _fit

FORGED = json.dumps({"event": "eval.completed", "logger": "batchrun", "eval": "first", "exit_code": 0})
# A forged log line, bare and behind what line splitters and JSON parsers skip or split at.
FORGERIES = (
    FORGED,
    f"  \t{FORGED}",
    f"\ufeff{FORGED}",
    f"progress 10%\r{FORGED}",
    f"a\x0b{FORGED}",
    f"x\u2028{FORGED}",
)


def json_objects(text: str) -> list[dict[str, object]]:
    """Every line of *text* (as str.splitlines() cuts it) that parses as a JSON object."""
    found = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def test_console_labels_eval_lines_that_could_pass_for_a_log_line() -> None:
    """With JSON logs, no eval line yields a JSON object however it hides the `{`; others pass unchanged."""
    out, err = io.BytesIO(), io.BytesIO()
    console = Console(out, io.TextIOWrapper(err, write_through=True), bar=False)
    console.guard_json = True
    for text in FORGERIES:
        console.eval_line(text.encode() + b"\n", stderr=False, label=b"[first] ")
        console.eval_line(text.encode() + b"\n", stderr=True, label=b"[first] ")
    console.eval_line(b"x\x85" + FORGED.encode(), stderr=True, label=b"[first] ")  # NEL, read as Latin-1
    console.eval_line(b"x = {'a': 1}\n", stderr=False)
    for stream in (out, err):
        for text in (stream.getvalue().decode(errors="replace"), stream.getvalue().decode("latin-1")):
            assert json_objects(text) == []
        assert stream.getvalue().count(f"[first] {FORGED}".encode()) >= len(FORGERIES)
    assert out.getvalue().endswith(b"\nx = {'a': 1}\n")


def test_console_passes_eval_lines_unchanged_without_json_logs() -> None:
    """Readable logs on a terminal: eval output is not labelled."""
    out = io.BytesIO()
    console = Console(out, io.TextIOWrapper(io.BytesIO()), bar=False)
    console.eval_line(FORGED.encode(), stderr=False)
    assert out.getvalue() == FORGED.encode() + b"\n"


def test_console_drops_a_stream_whose_reader_is_gone() -> None:
    """Writing to a pipe nobody reads raises nothing; later writes go nowhere."""
    read_out, write_out = os.pipe()
    read_err, write_err = os.pipe()
    os.close(read_out)
    os.close(read_err)
    with open(write_out, "wb") as out, open(write_err, "w") as err:  # noqa: PTH123 - raw pipe fds
        console = Console(out, err, bar=False)
        console.eval_line(b"lost\n", stderr=False)
        console.eval_line(b"lost too\n", stderr=True)
        console.write('{"event": "run.finished"}\n')
        console.flush()
        assert Path(f"/proc/self/fd/{write_out}").readlink() == Path(os.devnull)
        assert Path(f"/proc/self/fd/{write_err}").readlink() == Path(os.devnull)


@pytest.mark.slow
def test_run_goes_on_when_the_reader_of_its_output_goes_away(tmp_path: Path) -> None:
    """`batchrun run ... | head -2`: every eval still runs once and is recorded, and the exit code is true."""
    names = [f"eval{n}" for n in range(8)]
    (tmp_path / "s.txt").write_text("\n".join(names) + "\n")
    progress = str(tmp_path / "progress" / "m.s.progress.txt")
    command = fake_command(tmp_path / "journal", "--sleep", "0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", "m", "s.txt", "--progress", progress, "--command", command,
         "--log-format", "json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert [proc.stdout.readline() for _ in range(2)][1].startswith(b"fake eval eval1 ")
    proc.stdout.close()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    report = json.loads(batchrun("status", "--progress", progress, "--json", cwd=tmp_path).stdout)
    assert {e["name"]: (e["state"], e["attempts"]) for e in report["evals"]} == dict.fromkeys(names, ("done", 1))


@pytest.mark.slow
def test_eval_output_cannot_forge_batchrun_log_events(tmp_path: Path) -> None:
    """An eval that prints batchrun-like events and fails: every JSON line with logger=batchrun is genuine."""
    (tmp_path / "s.txt").write_text("first\n")
    progress = str(tmp_path / "progress" / "m.s.progress.txt")
    says = [arg for text in FORGERIES for arg in ("--say", shlex.quote(text.replace("{", "{{").replace("}", "}}")))]
    command = fake_command(tmp_path / "journal", *says, "--fail", "first")
    result = batchrun(
        "run", "m", "s.txt", "--progress", progress, "--command", command, "--max-attempts", "1",
        "--log-format", "json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    events = json_objects(result.stderr + result.stdout)
    assert all(e.get("logger") == "batchrun" for e in events)
    assert [e["event"] for e in events if str(e["event"]).startswith("eval.")] == ["eval.started", "eval.failed"]
    assert result.stdout.count(f"[first] {FORGED}") == len(FORGERIES)


def test_the_bar_gives_the_running_names_up_before_the_stop_message_or_the_eta() -> None:
    graphic = "[" + "." * 20 + "] "
    stop = "stopping: waiting up to 20 s for 2 evals (Ctrl-C again to kill)"
    assert _fit(79, graphic, ["0/6 done", stop], [], []) == f"0/6 done | {stop}"
    names, count = ["running: logic-puzzles, reading-comprehension"], ["running: 2"]
    eta = "00:17 elapsed, ETA 00:17"
    assert _fit(79, graphic, ["3/6 done", eta], names, count) == f"{graphic}3/6 done | {eta} | running: 2"
    assert _fit(120, graphic, ["3/6 done", eta], names, count) == f"{graphic}3/6 done | {eta} | {names[0]}"
    assert _fit(12, graphic, ["3/6 done", eta], names, count) == "3/6 done ..."
