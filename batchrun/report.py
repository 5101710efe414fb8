"""The local half of `batchrun report`: an eval's headline metrics read from its (downloaded)
results folder, and the report's rows rendered as a table, JSON or CSV.

Readers are tried in order, the first to find something wins: inspect-ai's `.eval` logs, an
oaieval record file (`*.jsonl` with a ``final_report`` line), a `metrics.json` at the folder's top.
A folder none of them understands has no metrics (None); no file, however broken, raises.

Inspect logs: inspect-ai's own reader when it is installed, else the zip's `header.json`. Inspect's
reader is the more robust for what inspect writes: it knows every log version and layout (a running
log with only `_journal/start.json`, the zstd compression of recent versions, split into frames for
big members) and follows their changes. The header is the more robust where inspect-ai is missing
(a laptop pulling results written on a pod) or rejects a log written by a newer inspect (pydantic
validation): it reads only the few fields shown here. Hence inspect's reader first, the header when
inspect-ai is not importable or its reader fails. Without inspect-ai a zstd header needs Python >=
3.14 or the `zstandard` package; without either the eval's row says so.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import os
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from batchrun._fleet_view import format_age

__all__ = ["Metrics", "Row", "read_metrics", "render_csv", "render_json", "render_table"]

Value = float | int | str
_ZIP_ZSTANDARD = 93  # the zip compression method id of zstd (zipfile knows it from Python 3.14)
_NEEDS_ZSTD = "its .eval logs are zstd-compressed: install inspect-ai or zstandard to read them"
_FIXED_COLUMNS = ("eval", "state", "attempts", "duration_s", "source")


@dataclass(frozen=True, slots=True)
class Metrics:
    """An eval's headline metrics: where they come from ("inspect", "oaieval", "metrics.json"),
    name -> value, and a remark on how they were picked (several logs, a log that did not succeed).
    """

    source: str
    values: dict[str, Value]
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """One eval's line of the report; `duration_s` is None when unknown."""

    eval: str
    state: str
    attempts: int
    duration_s: float | None
    metrics: Metrics | None


def read_metrics(folder: Path) -> Metrics | None:
    """The headline metrics in an eval's local results *folder*, or None if nothing there is readable.
    Inspect logs that hold no metrics (a running log; zstd and no decoder) give empty values and a note.
    """
    for reader in (_read_inspect, _read_oaieval, _read_metrics_json):
        try:
            found = reader(folder)
        except Exception:  # noqa: BLE001 - an eval's files can never fail the report
            found = None
        if found is not None:
            return found
    return None


@dataclass(frozen=True, slots=True)
class _Log:
    path: Path
    status: str
    when: float  # the log's own `eval.created` (its file name is made from it), else its mtime
    results: dict[str, Any] | None


class _ZstdUnavailableError(Exception):
    """A zstd-compressed member, and nothing here to decompress it."""


def _read_inspect(folder: Path) -> Metrics | None:
    paths = _files(folder, ".eval")
    logs: list[_Log] = []
    needs_zstd = False
    for path in paths:
        try:
            logs.append(_inspect_header(path))
        except _ZstdUnavailableError:
            needs_zstd = True
        except Exception:  # noqa: BLE001, S112 - a corrupt or truncated log is skipped
            continue
    if not logs:
        return Metrics("inspect", {}, _NEEDS_ZSTD) if needs_zstd else None
    succeeded = [log for log in logs if log.status == "success"]
    log = max(succeeded or logs, key=lambda log: (log.when, log.path.name))
    notes = []
    if len(logs) > 1:
        notes.append(f"{len(logs)} logs, newest " + ("successful one used" if succeeded else "used"))
    if log.status != "success":
        notes.append(f"log {log.status}")
    if len(paths) > len(logs):
        notes.append(f"{len(paths) - len(logs)} unreadable")
    return Metrics("inspect", _inspect_values(log.results or {}), ", ".join(notes) or None)


def _inspect_header(path: Path) -> _Log:
    try:
        read_eval_log = importlib.import_module("inspect_ai.log").read_eval_log
    except ImportError:
        return _zip_header(path)
    try:
        log = read_eval_log(str(path), header_only=True)
    except Exception:  # noqa: BLE001 - e.g. a log from a newer inspect its models reject
        return _zip_header(path)
    results = None if log.results is None else log.results.model_dump()
    return _Log(path, str(log.status), _timestamp(log.eval.created, path), results)


def _zip_header(path: Path) -> _Log:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        member = "header.json" if "header.json" in names else "_journal/start.json"
        header = json.loads(_member(archive, path, member))  # KeyError if neither: not a log
    created = (header.get("eval") or {}).get("created")
    return _Log(path, str(header.get("status", "started")), _timestamp(created, path), header.get("results"))


def _member(archive: zipfile.ZipFile, path: Path, name: str) -> bytes:
    """One member's bytes, streamed from the zip (never the whole zip in memory)."""
    info = archive.getinfo(name)
    try:
        with archive.open(info) as member:
            return member.read()
    except NotImplementedError:  # zstd, Python < 3.14, and no inspect-ai to patch zipfile
        if info.compress_type != _ZIP_ZSTANDARD:
            raise
    try:
        zstandard = importlib.import_module("zstandard")
    except ImportError as exc:
        raise _ZstdUnavailableError(name) from exc
    with path.open("rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)  # the local file header; its name and extra field precede the data
        if local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(name)
        name_size, extra_size = struct.unpack("<HH", local[26:30])
        raw.seek(info.header_offset + 30 + name_size + extra_size)
        data = raw.read(info.compress_size)
    parts = []
    while data:  # inspect splits big members into several zstd frames
        frame = zstandard.ZstdDecompressor().decompressobj()
        parts.append(frame.decompress(data))
        data = frame.unused_data if frame.eof else b""
    return b"".join(parts)


def _timestamp(created: object, path: Path) -> float:
    with contextlib.suppress(TypeError, ValueError):
        return datetime.fromisoformat(str(created)).timestamp()
    return path.stat().st_mtime


def _inspect_values(results: dict[str, Any]) -> dict[str, Value]:
    """Each scorer's metrics ("accuracy", or "scorer/accuracy" beside other scorers), then
    "samples" as completed/total.
    """
    scores = [score for score in results.get("scores") or [] if isinstance(score, dict)]
    values: dict[str, Value] = {}
    for score in scores:
        for key, metric in (score.get("metrics") or {}).items():
            value = metric.get("value") if isinstance(metric, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                name = str(metric.get("name") or key)
                values[name if len(scores) == 1 else f"{score.get('name')}/{name}"] = value
    total, completed = results.get("total_samples"), results.get("completed_samples")
    if isinstance(total, int) and isinstance(completed, int):
        values["samples"] = f"{completed}/{total}"
    return values


def _read_oaieval(folder: Path) -> Metrics | None:
    reports = []
    for path in _files(folder, ".jsonl"):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            report = _final_report(path)
            if report is not None:
                reports.append((path.stat().st_mtime, path.name, report))
    if not reports:
        return None
    values = _flatten(max(reports, key=lambda found: found[:2])[2])
    note = f"{len(reports)} record files, newest used" if len(reports) > 1 else None
    return Metrics("oaieval", values, note) if values else None


def _final_report(path: Path) -> dict[str, Any] | None:
    """The last ``{"final_report": {...}}`` line of a record file, read line by line; oaieval
    writes it before flushing its last events, so it need not be the file's last line.
    """
    report = None
    with path.open("rb") as lines:
        for line in lines:
            if b'"final_report"' in line:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and isinstance(record.get("final_report"), dict):
                        report = record["final_report"]
    return report


def _read_metrics_json(folder: Path) -> Metrics | None:
    data = json.loads((folder / "metrics.json").read_bytes())
    values = _flatten(data) if isinstance(data, dict) else {}
    return Metrics("metrics.json", values) if values else None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Value]:
    """Numbers and strings of a JSON object, nested objects as "outer/inner", booleans as 1/0;
    lists and nulls are left out.
    """
    values: dict[str, Value] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            values.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, bool):
            values[f"{prefix}{key}"] = int(value)
        elif isinstance(value, int | float | str):
            values[f"{prefix}{key}"] = value
    return values


def _files(folder: Path, suffix: str) -> list[Path]:
    """Files named *suffix* under *folder*, outside dot-folders (inspect's `.buffer/`); folders
    that cannot be listed are skipped.
    """
    found: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found.extend(Path(root, name) for name in names if name.endswith(suffix) and not name.startswith("."))
    return found


def render_table(rows: Iterable[Row]) -> str:
    """A readable table: eval, state, attempts, duration and "name=value ..." (or "no metrics")."""
    lines = [("eval", "state", "attempts", "duration", "metrics")]
    for row in rows:
        duration = "-" if row.duration_s is None else format_age(row.duration_s)
        lines.append((row.eval, row.state, str(row.attempts), duration, _describe(row.metrics)))
    w = [max(len(line[column]) for line in lines) for column in range(4)]
    return "\n".join(f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d:<{w[3]}}  {e}" for a, b, c, d, e in lines)


def _describe(metrics: Metrics | None) -> str:
    if metrics is None:
        return "no metrics"
    text = " ".join(f"{name}={_compact(value)}" for name, value in metrics.values.items()) or "no metrics"
    return f"{text} ({metrics.note})" if metrics.note else text


def _compact(value: Value) -> str:
    """0.733 for 0.73333, 1 for 1.0, 0.000123 for small values; other values as they are."""
    if not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    if abs(value) >= 0.001:  # noqa: PLR2004 - three decimals while they show something
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def render_json(rows: Iterable[Row]) -> str:
    """``{"evals": [...]}``, each with its source and metrics (an object, NaN and infinities as null) or null."""
    evals = []
    for row in rows:
        entry: dict[str, Any] = {"eval": row.eval, "state": row.state, "attempts": row.attempts}
        entry.update(duration_s=row.duration_s, source=None, metrics=None, note=None)
        if row.metrics is not None:
            values = row.metrics.values
            finite = {name: None if isinstance(v, float) and not math.isfinite(v) else v for name, v in values.items()}
            entry.update(source=row.metrics.source, metrics=finite, note=row.metrics.note)
        evals.append(entry)
    return json.dumps({"evals": evals}, ensure_ascii=False)


def render_csv(rows: Sequence[Row]) -> str:
    """eval,state,attempts,duration_s,source, then one column per metric name (in order of first
    appearance); a metric named like a fixed column is headed "metrics/NAME".
    """
    names = list(dict.fromkeys(name for row in rows if row.metrics for name in row.metrics.values))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*_FIXED_COLUMNS, *(f"metrics/{n}" if n in _FIXED_COLUMNS else n for n in names)])
    for row in rows:
        values = row.metrics.values if row.metrics else {}
        duration = "" if row.duration_s is None else row.duration_s
        source = row.metrics.source if row.metrics else ""
        writer.writerow([row.eval, row.state, row.attempts, duration, source, *(values.get(n, "") for n in names)])
    return out.getvalue()
