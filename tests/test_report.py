"""`batchrun report`'s local half: metrics read from real inspect-ai logs, an oaieval record file and
metrics.json, nothing raised on broken files, and the rows as a table, JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import TESTS

from batchrun import report
from batchrun.report import Metrics, Row, read_metrics, render_csv, render_json, render_table

TASK = TESTS / "data" / "inspect_task.py"
SIX_SAMPLES = {"accuracy": pytest.approx(4 / 6), "stderr": pytest.approx(0.2108, abs=1e-4), "samples": "6/6"}


@pytest.fixture(scope="session")
def inspect_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One log of the counting task (6 samples, 4 right) written by real inspect-ai with mockllm."""
    pytest.importorskip("inspect_ai", reason="inspect-ai is not installed")
    log_dir = tmp_path_factory.mktemp("inspect-logs")
    command = [sys.executable, "-m", "inspect_ai", "eval", f"{TASK}@counting", "--model", "mockllm/model"]
    command += ["--log-dir", str(log_dir), "--display", "none", "-T", "samples=6"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    (log,) = log_dir.glob("*.eval")
    return log


@pytest.fixture(scope="session")
def log_members(inspect_log: Path) -> dict[str, bytes]:
    """The members of that log, read with inspect-ai's zipfile patch (its members are zstd-compressed);
    session-scoped, so read before a test makes inspect-ai unimportable.
    """
    pytest.importorskip("zipfile_zstd")
    with zipfile.ZipFile(inspect_log) as log:
        return {name: log.read(name) for name in log.namelist()}


@pytest.fixture(params=["inspect_reader", "zip_header"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using it runs with inspect-ai's reader and with the zip header (inspect-ai made unimportable)."""
    if request.param == "zip_header":
        monkeypatch.setitem(sys.modules, "inspect_ai.log", None)
    else:
        monkeypatch.setattr(report, "_zip_header", None)  # the fallback would fail if it were used
    return str(request.param)


def relog(source: dict[str, bytes], folder: Path, *, status: str, minutes: int, accuracy: float = 1.0) -> Path:
    """A log made of the members *source* (with or without header.json) with another status, accuracy
    and creation time, written with deflate, as inspect-ai wrote logs before it moved to zstd.
    """
    members = dict(source)
    name = "header.json" if "header.json" in members else "_journal/start.json"
    data = json.loads(members[name])
    created = datetime.fromisoformat(data["eval"]["created"]) + timedelta(minutes=minutes)
    data["eval"]["created"] = created.isoformat()
    if "results" in data:
        data["status"] = status
        data["results"]["completed_samples"] = 2
        data["results"]["scores"][0]["metrics"]["accuracy"]["value"] = accuracy
    members[name] = json.dumps(data).encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{created.astimezone(UTC):%Y-%m-%dT%H-%M-%S}+00-00_counting_{status}{minutes}.eval"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as copy:
        for member, content in members.items():
            copy.writestr(member, content)
    return path


def place(log: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / log.name).write_bytes(log.read_bytes())
    return folder


def test_inspect_log_gives_each_metric_and_the_sample_count(inspect_log: Path, reader: str, tmp_path: Path) -> None:
    """A zstd log written by inspect-ai reads as accuracy 4/6, its stderr and 6/6 samples, by either reader."""
    metrics = read_metrics(place(inspect_log, tmp_path / reader))
    assert metrics == Metrics("inspect", SIX_SAMPLES)


@pytest.mark.usefixtures("reader")
def test_newest_successful_log_wins_over_a_newer_cancelled_one(
    inspect_log: Path, log_members: dict[str, bytes], tmp_path: Path
) -> None:
    """Of a successful log and a newer cancelled one, the successful one is used, and the note says so."""
    relog(log_members, tmp_path, status="cancelled", minutes=5)
    place(inspect_log, tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics == Metrics("inspect", SIX_SAMPLES, "2 logs, newest successful one used")


@pytest.mark.usefixtures("reader")
def test_without_a_successful_log_the_newest_is_used(log_members: dict[str, bytes], tmp_path: Path) -> None:
    """With only cancelled and failed logs, the newest by the log's own creation time is used."""
    relog(log_members, tmp_path, status="cancelled", minutes=10, accuracy=0.5)
    older = relog(log_members, tmp_path, status="error", minutes=5, accuracy=0.25)
    older.rename(tmp_path / f"z-sorts-last-by-name-{older.name}")
    metrics = read_metrics(tmp_path)
    assert metrics is not None
    assert (metrics.values["accuracy"], metrics.values["samples"]) == (0.5, "2/6")
    assert metrics.note == "2 logs, newest used, log cancelled"


@pytest.mark.usefixtures("reader")
def test_a_running_log_has_no_results_yet(log_members: dict[str, bytes], tmp_path: Path) -> None:
    """A log still being written (no header.json, only its start journal) reads as started, without metrics."""
    running = {name: content for name, content in log_members.items() if name != "header.json"}
    relog(running, tmp_path, status="started", minutes=1)
    assert read_metrics(tmp_path) == Metrics("inspect", {}, "log started")


def test_logs_in_subfolders_count_but_not_in_dot_folders(inspect_log: Path, tmp_path: Path) -> None:
    """A log under a subfolder is found; one under `.buffer/` (inspect's --log-shared copy) is not."""
    place(inspect_log, tmp_path / ".buffer" / "x")
    assert read_metrics(tmp_path) is None
    place(inspect_log, tmp_path / "logs")
    assert read_metrics(tmp_path) == Metrics("inspect", SIX_SAMPLES)


def run_without(modules: list[str], folder: Path) -> str:
    """read_metrics(*folder*) in a fresh interpreter where *modules* cannot be imported: its repr."""
    code = (
        "import sys, pathlib\n"
        f"sys.modules.update(dict.fromkeys({modules!r}))\n"
        "from batchrun.report import read_metrics\n"
        f"print(repr(read_metrics(pathlib.Path({str(folder)!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_zstd_header_is_read_where_inspect_ai_is_not_installed(inspect_log: Path, tmp_path: Path) -> None:
    """Without inspect-ai (and so without its zipfile patch) the zstd header is decoded with zstandard."""
    pytest.importorskip("zstandard")
    shown = run_without(["inspect_ai", "zipfile_zstd"], place(inspect_log, tmp_path))
    assert shown.startswith("Metrics(source='inspect', values={'accuracy': 0.666")
    assert shown.endswith("'samples': '6/6'}, note=None)")


def test_zstd_header_split_into_frames_is_read_to_its_end(tmp_path: Path) -> None:
    """A header.json compressed as several zstd frames (as inspect-ai splits big members) is read whole."""
    zstandard = pytest.importorskip("zstandard")
    score = {"name": "match", "metrics": {"accuracy": {"name": "accuracy", "value": 0.5}}}
    results = {"total_samples": 3, "completed_samples": 3, "scores": [score]}
    header = json.dumps({"status": "success", "eval": {"created": "2025-01-01T00:00:00+00:00"}, "results": results})
    frames = b"".join(zstandard.ZstdCompressor().compress(part.encode()) for part in (header[:50], header[50:]))
    with zipfile.ZipFile(tmp_path / "log.eval", "w") as log:
        log.writestr("header.json", frames)  # stored, then relabelled as zstd (method 93) below
    data = bytearray((tmp_path / "log.eval").read_bytes())
    for signature, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = data.index(signature) + method_at
        data[start : start + 2] = (93).to_bytes(2, "little")
    (tmp_path / "log.eval").write_bytes(data)
    shown = run_without(["inspect_ai", "zipfile_zstd"], tmp_path)
    assert shown == repr(Metrics("inspect", {"accuracy": 0.5, "samples": "3/3"}))


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="zipfile reads zstd itself from Python 3.14")
def test_zstd_log_without_any_decoder_says_what_to_install(inspect_log: Path, tmp_path: Path) -> None:
    """Without inspect-ai or zstandard a zstd log gives no metrics and a note on what would read it."""
    shown = run_without(["inspect_ai", "zipfile_zstd", "zstandard"], place(inspect_log, tmp_path))
    assert shown == repr(Metrics("inspect", {}, report._NEEDS_ZSTD))  # noqa: SLF001


def test_reading_metrics_imports_neither_inspect_ai_nor_zstandard_until_needed() -> None:
    """Importing the report module (as `batchrun --help` does) loads neither inspect-ai nor zstandard."""
    code = "import sys, batchrun.report\nprint(sorted(m for m in sys.modules if m.startswith(('inspect_ai', 'zstd'))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


RECORD = [
    {
        "spec": {
            "completion_fns": ["gpt-4o-mini"],
            "eval_name": "test-match.s1.simple-v0",
            "base_eval": "test-match",
            "split": "s1",
            "run_config": {"completion_fns": ["gpt-4o-mini"], "eval_spec": {"cls": "evals.elsuite.basic.match:Match"}},
            "created_by": "",
            "run_id": "240101000000ABCDEFGH",
            "created_at": "2024-01-01 00:00:00.000000",
        }
    },
    *(
        {
            "run_id": "240101000000ABCDEFGH",
            "event_id": 2 * i + offset,
            "sample_id": f"test-match.s1.{i}",
            "type": kind,
            "data": data,
            "created_by": "",
            "created_at": "2024-01-01 00:00:01.000000+00:00",
        }
        for i in range(2)
        for offset, kind, data in [
            (0, "sampling", {"prompt": "Complete: final_report", "sampled": ["abc"]}),
            (1, "match", {"correct": i == 0, "expected": "abc", "picked": "abc" if i == 0 else None}),
        ]
    ),
    {"final_report": {"accuracy": 0.5, "boostrap_std": 0.35355}},
]


def write_record(path: Path, records: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_oaieval_record_gives_its_final_report(tmp_path: Path) -> None:
    """The final_report of an oaieval record file is read, even with events flushed after it."""
    late_event = {**RECORD[1], "event_id": 9}
    write_record(tmp_path / "record.jsonl", [*RECORD, late_event])
    assert read_metrics(tmp_path) == Metrics("oaieval", {"accuracy": 0.5, "boostrap_std": 0.35355})


def test_oaieval_record_takes_the_last_final_report_and_the_newest_file(tmp_path: Path) -> None:
    """Of two final reports in a file the last counts; of two record files the newest."""
    older = write_record(tmp_path / "old" / "record.jsonl", [*RECORD[:1], {"final_report": {"accuracy": 0.1}}])
    write_record(tmp_path / "record.jsonl", [*RECORD, {"final_report": {"accuracy": 0.75}}])
    metrics = read_metrics(tmp_path)
    assert metrics == Metrics("oaieval", {"accuracy": 0.75}, "2 record files, newest used")
    os.utime(older, (time.time() + 60, time.time() + 60))
    assert read_metrics(tmp_path) == Metrics("oaieval", {"accuracy": 0.1}, "2 record files, newest used")


def test_oaieval_record_without_final_report_gives_no_metrics(tmp_path: Path) -> None:
    """A record file of a run that has not finished has no metrics yet."""
    write_record(tmp_path / "record.jsonl", RECORD[:-1])
    assert read_metrics(tmp_path) is None


def test_metrics_json_keeps_scalars_and_flattens_nested_objects(tmp_path: Path) -> None:
    """metrics.json: numbers and strings kept, booleans as 1/0, nested objects as "a/b", lists and nulls dropped."""
    data = {"accuracy": 0.9, "n": 30, "passed": True, "model": "m", "by": {"math": {"acc": 0.5}}, "l": [1], "x": None}
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    expected = {"accuracy": 0.9, "n": 30, "passed": 1, "model": "m", "by/math/acc": 0.5}
    assert read_metrics(tmp_path) == Metrics("metrics.json", expected)


def test_metrics_json_only_counts_at_the_folders_top(tmp_path: Path) -> None:
    """A metrics.json in a subfolder is not the eval's."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "metrics.json").write_text('{"accuracy": 1}')
    assert read_metrics(tmp_path) is None


def test_inspect_logs_come_before_a_record_and_metrics_json(inspect_log: Path, tmp_path: Path) -> None:
    """With an inspect log, a record file and metrics.json side by side, the inspect log is read."""
    place(inspect_log, tmp_path)
    write_record(tmp_path / "record.jsonl", RECORD)
    (tmp_path / "metrics.json").write_text('{"accuracy": 1}')
    assert read_metrics(tmp_path) == Metrics("inspect", SIX_SAMPLES)


BROKEN = {
    "empty.eval": b"",
    "text.eval": b"not a zip",
    "truncated.eval": b"PK\x03\x04" + b"\0" * 40,
    "record.jsonl": b'\xff\xfe{"final_report": \x00\n{"final_report": [1, 2]}\n{"final_report": {}}\n',
    "metrics.json": b"{",
}


@pytest.mark.parametrize("name", [*BROKEN, "metrics.json-list", "metrics.json-folder", "no-such-folder", "other"])
def test_broken_or_unknown_files_give_no_metrics(name: str, tmp_path: Path) -> None:
    """Empty, corrupt, truncated and unknown files and unreadable paths give no metrics, never an error."""
    if name in BROKEN:
        (tmp_path / name).write_bytes(BROKEN[name])
    elif name == "metrics.json-list":
        (tmp_path / "metrics.json").write_text("[1, 2]")
    elif name == "metrics.json-folder":
        (tmp_path / "metrics.json").mkdir()
    elif name == "other":
        (tmp_path / "out.txt").write_text("accuracy 0.5\n")
        (tmp_path / "data.jsonl").write_text('{"a": 1}\n')
    folder = tmp_path / "missing" if name == "no-such-folder" else tmp_path
    assert read_metrics(folder) is None


def test_a_broken_log_beside_a_good_one_is_skipped(inspect_log: Path, tmp_path: Path) -> None:
    """A corrupt .eval next to a readable one is counted as unreadable; the readable one is used."""
    (tmp_path / "2099-01-01T00-00-00+00-00_counting_x.eval").write_bytes(inspect_log.read_bytes()[:2000])
    place(inspect_log, tmp_path)
    assert read_metrics(tmp_path) == Metrics("inspect", SIX_SAMPLES, "1 unreadable")


def test_only_broken_logs_fall_through_to_metrics_json(tmp_path: Path) -> None:
    """When no .eval file is readable, the next reader gets its turn."""
    (tmp_path / "x.eval").write_bytes(b"garbage")
    (tmp_path / "metrics.json").write_text('{"score": 3}')
    assert read_metrics(tmp_path) == Metrics("metrics.json", {"score": 3})


ROWS = [
    Row(
        "arc,easy", "done", 1, 754.0, Metrics("inspect", {"accuracy": 0.73333, "stderr": 0.0001234, "samples": "30/30"})
    ),
    Row('say "hi"', "failed", 3, None, None),
    Row("数学", "done", 2, 3.25, Metrics("metrics.json", {"f1": 1.0, "accuracy": float("nan")}, "2 logs, newest used")),
]


def test_table_shows_metrics_compactly_and_no_metrics_where_there_are_none() -> None:
    """The table has one line per eval: compact numbers, "no metrics", the note in parentheses."""
    assert render_table(ROWS).splitlines() == [
        "eval      state   attempts  duration  metrics",
        "arc,easy  done           1  13 min    accuracy=0.733 stderr=0.000123 samples=30/30",
        'say "hi"  failed         3  -         no metrics',
        "数学        done           2  3.2 s     f1=1 accuracy=nan (2 logs, newest used)",
    ]


def test_json_has_metrics_as_an_object_or_null_and_nan_as_null() -> None:
    """The JSON object lists every eval with its source and metrics; NaN becomes null so it stays JSON."""
    data = json.loads(render_json(ROWS))
    assert data["evals"][1] == {
        "eval": 'say "hi"',
        "state": "failed",
        "attempts": 3,
        "duration_s": None,
        "source": None,
        "metrics": None,
        "note": None,
    }
    assert data["evals"][2]["metrics"] == {"f1": 1.0, "accuracy": None}
    assert (data["evals"][2]["eval"], data["evals"][0]["source"]) == ("数学", "inspect")


def test_csv_has_one_column_per_metric_over_all_rows() -> None:
    """CSV columns: the fixed ones, then every metric name in first-seen order; odd names survive quoting."""
    rows = [*ROWS, Row("x", "done", 1, 1.5, Metrics("metrics.json", {"state": "ok", "f1": 0.5}))]
    table = list(csv.reader(io.StringIO(render_csv(rows))))
    assert table == [
        ["eval", "state", "attempts", "duration_s", "source", "accuracy", "stderr", "samples", "f1", "metrics/state"],
        ["arc,easy", "done", "1", "754.0", "inspect", "0.73333", "0.0001234", "30/30", "", ""],
        ['say "hi"', "failed", "3", "", "", "", "", "", "", ""],
        ["数学", "done", "2", "3.25", "metrics.json", "nan", "", "", "1.0", ""],
        ["x", "done", "1", "1.5", "metrics.json", "", "", "", "0.5", "ok"],
    ]
