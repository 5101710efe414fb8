"""The fleet scenario's parts: W `batchrun run` workers started at once on one S3 store, timed, and
every S3 request they make counted at the moto server.

`python bench/fleet.py serve PORT` is moto's own server app (as `python -m moto.server` runs it)
wrapped in a counter: every request but moto's API is noted (method, key, query), and
``GET /_bench/requests`` hands the notes over and starts a new list (no bucket name starts with
``_``). Counting at the server sees what really reaches S3, retries included, with
no extra hop between the workers and the store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

REQUESTS_PATH = "/_bench/requests"
# Columns of the request tables: S3 operations as the workers use them. LIST is a GET with
# list-type=2 (ListObjectsV2); DELETE counts DeleteObjects (a POST ?delete, noted under its first
# key) and single DELETEs.
KINDS = ("GET", "HEAD", "LIST", "PUT", "DELETE", "POST")
AREAS = ("workers", "claims", "events", "snapshot", "progress", "run.json", "logs", "other")


# --- the counting moto server (a process of its own) ------------------------------------------


def serve(port: int) -> None:
    """Run moto's server app on 127.0.0.1:*port*, noting every request (see the module docstring)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    moto_app = DomainDispatcherApplication(create_backend_app)
    noted: list[list[str]] = []
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:  # noqa: ANN401 - WSGI's callable
        path = environ.get("PATH_INFO", "")
        if path == REQUESTS_PATH:
            with lock:
                body = json.dumps({"cpu": time.process_time(), "requests": noted}).encode()
                noted.clear()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if not path.startswith("/moto-api/"):
            query = environ.get("QUERY_STRING", "")
            if environ["REQUEST_METHOD"] == "POST" and "delete" in parse_qs(query, keep_blank_values=True):
                path = _first_deleted(environ, path)
            note = [environ["REQUEST_METHOD"], path, query]
            with lock:
                noted.append(note)
        return moto_app(environ, start_response)

    run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)


def _first_deleted(environ: dict[str, Any], bucket: str) -> str:
    """A DeleteObjects request (POST /bucket?delete) noted as its first key: the body is read here
    and handed on to moto unchanged.
    """
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    match = re.search(rb"<Key>([^<]*)</Key>", body)
    return bucket if match is None else f"{bucket.rstrip('/')}/{html.unescape(match.group(1).decode())}"


@contextlib.contextmanager
def server_process(command: list[str]) -> Iterator[str]:
    """An S3 server started as ``command + [PORT]`` on a free port of 127.0.0.1, once it answers
    moto's API; yields its URL and stops it afterwards.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([*command, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait()


def counting_moto() -> contextlib.AbstractContextManager[str]:
    """A counting moto server in a process of its own; yields its URL."""
    return server_process([sys.executable, __file__, "serve"])


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One S3 request as the server saw it."""

    method: str
    path: str  # /bucket/key (a batch delete: its first key)
    query: dict[str, list[str]]

    @classmethod
    def parse(cls, note: list[str]) -> Request:
        method, path, query = note
        return cls(method, path, parse_qs(query, keep_blank_values=True))

    @property
    def kind(self) -> str:
        if self.method == "GET" and "list-type" in self.query:
            return "LIST"
        if self.method == "POST" and "delete" in self.query:
            return "DELETE"
        return self.method

    @property
    def key(self) -> str:
        """The key the request names (for a listing, its prefix)."""
        if self.kind == "LIST":
            return self.path.rstrip("/") + "/" + self.query.get("prefix", [""])[0]
        return self.path

    @property
    def area(self) -> str:
        """Which part of the store's layout (batchrun/progress.py) the request touches."""
        key = self.key
        sidecar, _, rest = key.partition(".progress.txt.d/")
        if not rest:
            return "progress" if sidecar.endswith(".progress.txt") else "other"
        top = rest.split("/", 1)[0]
        if top in ("workers", "claims", "events", "logs"):
            return top
        return {"snapshot.json": "snapshot", "run.json": "run.json"}.get(top, "other")


def take_requests(url: str) -> tuple[list[Request], float]:
    """The requests noted since the last call (the list starts anew), and the CPU seconds the
    server has used since it started.
    """
    with urllib.request.urlopen(f"{url}{REQUESTS_PATH}", timeout=30) as reply:
        answer = json.load(reply)
    return [Request.parse(note) for note in answer["requests"]], float(answer["cpu"])


# --- one fleet run ----------------------------------------------------------------------------


@dataclass
class FleetRun:
    """One run of W workers: its wall time, how each worker ended, and what reached S3."""

    workers: int
    evals: int
    wall: float
    codes: list[int]
    requests: list[Request]
    startup: float  # launch until the last worker logged run.started
    last_done: float  # launch until the last eval.completed (durable) of any worker
    claims_lost: int  # eval.claimed_elsewhere events, all workers
    cpu: float  # CPU seconds (user + system) of all workers and their evals
    server_cpu: float  # ... of the moto server meanwhile
    machine_busy: float  # the share of all cores' time not idle meanwhile, whoever used it (nan: unknown)
    heartbeats: int = field(init=False)

    def __post_init__(self) -> None:
        self.heartbeats = sum(1 for r in self.requests if r.area == "workers" and r.kind == "PUT")

    @property
    def tail(self) -> float:
        """From the last eval's completion to the last worker's exit."""
        return self.wall - self.last_done


def launch(  # noqa: PLR0913 - one fleet's whole set-up
    batchrun: list[str],
    env: dict[str, str],
    work: Path,
    url: str,
    *,
    workers: int,
    names: Path,
    command: str,
    progress: str,
) -> FleetRun:
    """Start *workers* `batchrun run` processes at once on *progress*; wait for all; count."""
    logs = [work / f"w{i}.jsonl" for i in range(workers)]
    _, server_before = take_requests(url)  # what came before (the bucket's creation) is not the fleet's
    with contextlib.ExitStack() as stack:
        streams = [stack.enter_context(log.open("wb")) for log in logs]
        machine_before = _machine_times()
        launched = time.time()
        started = time.perf_counter()
        argv = [*batchrun, "run", "bench", str(names), "--progress", progress, "--command", command, "--jobs", "1"]
        procs = [
            subprocess.Popen(
                [*argv, "--worker-id", f"w{i}", "--log-format", "json"],
                env=env,
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=streams[i],
            )
            for i in range(workers)
        ]
        codes, cpu = [], 0.0
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            codes.append(proc.returncode)
            cpu += usage.ru_utime + usage.ru_stime
        wall = time.perf_counter() - started
        machine_after = _machine_times()
    requests, server_after = take_requests(url)
    events = [json.loads(line) for log in logs for line in log.read_text().splitlines() if line.startswith("{")]

    def last(kind: str) -> float:
        stamps = [dt.datetime.fromisoformat(e["timestamp"]).timestamp() for e in events if e.get("event") == kind]
        return max(stamps) - launched if stamps else float("nan")

    lost = sum(1 for e in events if e.get("event") == "eval.claimed_elsewhere")
    total = sum(1 for _ in names.read_text().splitlines())
    startup, last_done = last("run.started"), last("eval.completed")
    busy = 1 - (machine_after[0] - machine_before[0]) / max(1, machine_after[1] - machine_before[1])
    return FleetRun(
        workers, total, wall, codes, requests, startup, last_done, lost, cpu, server_after - server_before, busy
    )


def _machine_times() -> tuple[float, float]:
    """Idle and total time of all cores so far, in clock ticks (Linux's /proc/stat); nan elsewhere."""
    try:
        ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    return ticks[3] + ticks[4], sum(ticks)


def check_done(batchrun: list[str], env: dict[str, str], work: Path, progress: str, evals: int) -> None:
    """`batchrun status --json` must say every eval of the run is done."""
    out = subprocess.run(
        [*batchrun, "status", "--progress", progress, "--json"], env=env, cwd=work, capture_output=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"batchrun status exited {out.returncode}: {out.stderr.decode()[-500:]}")
    report = json.loads(out.stdout)
    if report["total"] != evals or report["done"] != evals:
        raise SystemExit(f"fleet: status says {report['done']} of {report['total']} done, expected all {evals}")


# --- tables -----------------------------------------------------------------------------------


def per_eval(runs: list[FleetRun], column: Iterable[tuple[str, str]]) -> Counter[str]:
    """Mean requests per eval over *runs*, keyed by the (kind or area) value of each request."""
    wanted = dict(column)
    counts: Counter[str] = Counter()
    for run in runs:
        for request in run.requests:
            for name, attribute in wanted.items():
                if getattr(request, attribute) == name:
                    counts[name] += 1
    scale = len(runs) * runs[0].evals
    return Counter({name: n / scale for name, n in counts.items()})


def steady(run: FleetRun) -> int:
    """Requests other than the fleet's own (workers/: heartbeats, their listings and reads) and
    other than listings: what should stay constant per eval whatever W and E.
    """
    return sum(1 for r in run.requests if r.area != "workers" and r.kind != "LIST")


def requests_tables(groups: list[tuple[str, list[FleetRun]]]) -> str:
    """Two markdown tables: requests per eval by S3 operation, and by part of the store."""
    lines = [
        "S3 requests per eval, by operation (mean of the runs; DELETE counts batch deletes):",
        "",
        "| fleet | " + " | ".join(KINDS) + " | total | heartbeat PUTs | without workers/ and LIST |",
        "|---|" + "---|" * (len(KINDS) + 3),
    ]
    for label, runs in groups:
        kinds = per_eval(runs, ((k, "kind") for k in KINDS))
        scale = len(runs) * runs[0].evals
        total = sum(len(r.requests) for r in runs) / scale
        beats = sum(r.heartbeats for r in runs) / scale
        flat = sum(steady(r) for r in runs) / scale
        cells = [f"{kinds[k]:.2f}" for k in KINDS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {total:.2f} | {beats:.2f} | {flat:.2f} |")
    lines += [
        "",
        "S3 requests per eval, by part of the store (`P.d/...`; progress is P itself):",
        "",
        "| fleet | " + " | ".join(AREAS) + " |",
        "|---|" + "---|" * len(AREAS),
    ]
    for label, runs in groups:
        areas = per_eval(runs, ((a, "area") for a in AREAS))
        lines.append(f"| {label} | " + " | ".join(f"{areas[a]:.2f}" for a in AREAS) + " |")
    lines += ["", "The largest of them, part and operation (requests per eval):", ""]
    for label, runs in groups:
        cells = Counter(f"{r.area} {r.kind}" for run in runs for r in run.requests)
        scale = len(runs) * runs[0].evals
        top = ", ".join(f"{cell} {n / scale:.2f}" for cell, n in cells.most_common(6))
        lines.append(f"- {label}: {top}")
    return "\n".join(lines)


def timing_table(groups: list[tuple[str, list[FleetRun]]], seconds: float) -> str:
    """Where each fleet's wall time goes, and how busy the machine's cores were (medians of the runs)."""
    cores = os.cpu_count() or 1
    head = ["fleet", "wall", "ideal", "all workers started", "last eval done", "tail to last exit", "claims lost"]
    head += ["CPU workers", "CPU moto", "busy", "machine busy"]
    lines = [
        "Where the time goes (median of the runs; seconds from the launch of the first worker; CPU is",
        f"user + system of the workers with their evals, and of the moto server; busy is both over {cores} cores;",
        "machine busy is the cores' time not idle, whoever used it):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    med = statistics.median
    for label, runs in groups:
        ideal = runs[0].evals * seconds / runs[0].workers
        busy = med((r.cpu + r.server_cpu) / (r.wall * cores) for r in runs)
        lines.append(
            f"| {label} | {med(r.wall for r in runs):.2f} | {ideal:.2f} | {med(r.startup for r in runs):.2f} | "
            f"{med(r.last_done for r in runs):.2f} | {med(r.tail for r in runs):.2f} | "
            f"{med(r.claims_lost for r in runs):.0f} | {med(r.cpu for r in runs):.1f} s | "
            f"{med(r.server_cpu for r in runs):.1f} s | {busy:.0%} | {med(r.machine_busy for r in runs):.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        os.environ.setdefault("MOTO_PORT", sys.argv[2])
        serve(int(sys.argv[2]))
    else:
        raise SystemExit("usage: python bench/fleet.py serve PORT")
