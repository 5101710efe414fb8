"""batchrun's own cost, measured side by side with the simplest alternatives in one invocation.

Usage: python bench/run.py [--quick] [--runs N] [--only NAME ...]

Each scenario runs batchrun and its baselines alternately, N times each (median reported), on
no-op or sleeping evals, so only the runners' own cost shows. S3 is a moto server started here on
127.0.0.1. GNU parallel and openai/evals' oaievalset are used where installed, else skipped with a
note. --quick shrinks every scenario (CI runs it as a smoke test; its numbers mean little).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
FLOOR = HERE / "floor.py"
BUCKET = "bench"


@dataclass(frozen=True)
class Sample:
    wall: float
    max_rss_mb: float
    code: int


@dataclass(frozen=True)
class Row:
    scenario: str
    batchrun: str
    baseline: str
    baseline_value: str
    ratio: str
    target: str
    met: bool | None


def measure(cmd: list[str], env: dict[str, str], cwd: Path, stderr: Path | None = None) -> Sample:
    """Wall time and peak RSS of one command (its own RSS, via wait4)."""
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(stderr.open("wb")) if stderr else subprocess.DEVNULL
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Sample(wall, usage.ru_maxrss / 1024, proc.returncode)


def median(samples: list[Sample]) -> float:
    return statistics.median(s.wall for s in samples)


def check(samples: list[Sample], what: str) -> None:
    bad = [s.code for s in samples if s.code != 0]
    if bad:
        msg = f"{what} exited with {bad}"
        raise SystemExit(msg)


# --- the S3 server ----------------------------------------------------------------------------


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait()


def reset_s3(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
    urllib.request.urlopen(urllib.request.Request(f"{url}/{BUCKET}", method="PUT"))


# --- the contenders ---------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, runs: int, s3_url: str) -> None:
        self.work = work
        self.runs = runs
        self.s3_url = s3_url
        self.env = {
            **os.environ,
            "AWS_ENDPOINT_URL": s3_url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "OPENAI_API_KEY": "unused",
        }
        self.batchrun = [sys.executable, "-m", "batchrun"]
        self.notes: list[str] = []
        self.counter = 0

    def fresh(self) -> Path:
        self.counter += 1
        path = self.work / f"run-{self.counter}"
        path.mkdir()
        return path

    def names(self, count: int) -> Path:
        path = self.work / f"names-{count}.txt"
        if not path.exists():
            path.write_text("".join(f"eval-{i:05d}\n" for i in range(count)))
        return path

    def batchrun_cmd(self, names: Path, progress: str, command: str, jobs: int = 1) -> list[str]:
        return [
            *self.batchrun, "run", "bench", str(names), "--progress", progress, "--command", command,
            "--jobs", str(jobs), "--log-format", "json",
        ]  # fmt: skip

    def floor_cmd(self, kind: str, names: Path, done: str, command: list[str], jobs: int = 1) -> list[str]:
        return [sys.executable, str(FLOOR), kind, str(names), done, "--jobs", str(jobs), "--", *command]

    def alternate(
        self, contenders: dict[str, Callable[[], Sample]], runs: int | None = None
    ) -> dict[str, list[Sample]]:
        results: dict[str, list[Sample]] = {name: [] for name in contenders}
        for _ in range(runs or self.runs):
            for name, run in contenders.items():
                results[name].append(run())
        for name, samples in results.items():
            check(samples, name)
        return results

    # --- scenarios ----------------------------------------------------------------------------

    def local_noop(self, count: int) -> list[Row]:
        names = self.names(count)
        contenders: dict[str, Callable[[], Sample]] = {
            "batchrun": lambda: measure(
                self.batchrun_cmd(names, str(self.fresh() / "p.txt"), "true {eval}"), self.env, self.work
            ),
            "floor": lambda: measure(
                self.floor_cmd("local", names, str(self.fresh() / "done.txt"), ["true"]), self.env, self.work
            ),
        }
        parallel = shutil.which("parallel")
        if parallel:
            contenders["parallel"] = lambda: measure(
                [
                    parallel,
                    "--joblog",
                    str(self.fresh() / "joblog"),
                    "--resume",
                    "-j",
                    "1",
                    "true",
                    "{}",
                    "::::",
                    str(names),
                ],
                self.env,
                self.work,
            )
        else:
            self.notes.append("GNU parallel not installed (Debian package `parallel`): its baseline skipped.")
        oaievalset = self.oaievalset(count)
        if oaievalset:
            contenders["oaievalset"] = oaievalset
        results = self.alternate(contenders)
        b = median(results["batchrun"])
        rows = [
            ratio_row(f"{count} no-op evals, local, --jobs 1", b, "floor loop", median(results["floor"]), "<= 1.5x")
        ]
        if "parallel" in results:
            p = median(results["parallel"])
            rows.append(Row(rows[0].scenario, f"{b:.2f} s", "GNU parallel --joblog", f"{p:.2f} s",
                            f"{p / b:.2f}x faster", ">= 3x faster", p / b >= 3))  # fmt: skip
        if "oaievalset" in results:
            o = median(results["oaievalset"])
            rows.append(Row(rows[0].scenario, f"{b:.2f} s", "oaievalset (stub oaieval)", f"{o:.2f} s",
                            f"{o / b:.2f}x faster", "(reference)", None))  # fmt: skip
        return rows

    def oaievalset(self, count: int) -> Callable[[], Sample] | None:
        """Run oaievalset over a registry of *count* evals, with a stub `oaieval` that only exits 0."""
        if importlib.util.find_spec("evals") is None:
            self.notes.append("openai/evals not installed (`pip install evals`): the oaievalset baseline skipped.")
            return None
        registry = self.work / f"registry-{count}"
        (registry / "evals").mkdir(parents=True, exist_ok=True)
        (registry / "eval_sets").mkdir(exist_ok=True)
        evals = "".join(
            f"bench-{i:05d}:\n  id: bench-{i:05d}.dev.v0\n  metrics: [accuracy]\n"
            f"bench-{i:05d}.dev.v0:\n  class: evals.elsuite.basic.match:Match\n  args: {{samples_jsonl: x}}\n"
            for i in range(count)
        )
        (registry / "evals" / "bench.yaml").write_text(evals)
        members = "".join(f"    - bench-{i:05d}\n" for i in range(count))
        (registry / "eval_sets" / "bench.yaml").write_text(f"bench-{count}:\n  evals:\n{members}")
        stub = self.work / "stub-bin"
        stub.mkdir(exist_ok=True)
        (stub / "oaieval").write_text("#!/bin/sh\nexit 0\n")
        (stub / "oaieval").chmod(0o755)
        env = {**self.env, "PATH": f"{stub}:{self.env['PATH']}"}
        progress = Path(f"/tmp/oaievalset/bench.bench-{count}.progress.txt")

        def run() -> Sample:
            progress.unlink(missing_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "evals.cli.oaievalset",
                "bench",
                f"bench-{count}",
                "--registry_path",
                str(registry),
            ]
            return measure(cmd, env, self.work)

        return run

    def s3_noop(self, count: int) -> list[Row]:
        names = self.names(count)

        def batchrun() -> Sample:
            reset_s3(self.s3_url)
            return measure(self.batchrun_cmd(names, f"s3://{BUCKET}/p/", "true {eval}"), self.env, self.work)

        def floor() -> Sample:
            reset_s3(self.s3_url)
            return measure(self.floor_cmd("s3", names, f"s3://{BUCKET}/done", ["true"]), self.env, self.work)

        results = self.alternate({"batchrun": batchrun, "floor": floor})
        ours, theirs = median(results["batchrun"]), median(results["floor"])
        return [ratio_row(f"{count} no-op evals, S3 (moto)", ours, "floor loop, one PUT per eval", theirs, "<= 1.5x")]

    def s3_large(self, count: int, window: int, runs: int) -> tuple[list[Row], float]:
        names = self.names(count)
        firsts, lasts, reruns, starts, rss = [], [], [], [], []
        for _ in range(runs):
            reset_s3(self.s3_url)
            log = self.fresh() / "stderr.jsonl"
            cmd = self.batchrun_cmd(names, f"s3://{BUCKET}/p/", "true {eval}")
            sample = measure(cmd, self.env, self.work, stderr=log)
            check([sample], "batchrun")
            rss.append(sample.max_rss_mb)
            stamps = [
                dt.datetime.fromisoformat(e["timestamp"]).timestamp()
                for e in map(json.loads, log.read_text().splitlines())
                if e.get("event") == "eval.completed"
            ]
            firsts.append((stamps[window] - stamps[0]) / window)
            lasts.append((stamps[-1] - stamps[-1 - window]) / window)
            reruns.append(measure(cmd, self.env, self.work))
            starts.append(measure([sys.executable, "-c", "pass"], self.env, self.work))
        first, last = statistics.median(firsts), statistics.median(lasts)
        rerun, start = median(reruns), median(starts)
        rows = [
            Row(f"{count} no-op evals, S3: time per eval", f"last {window}: {last * 1000:.2f} ms",
                f"first {window}", f"{first * 1000:.2f} ms", f"{last / first:.2f}x", "<= 1.2x", last / first <= 1.2),
            Row(f"{count} done, S3: rerun", f"{rerun:.2f} s", "python -c pass", f"{start:.2f} s",
                f"+{rerun - start:.2f} s", "< +1 s", rerun - start < 1),
        ]  # fmt: skip
        return rows, statistics.median(rss)

    def parallel_sleep(self, count: int, jobs: int, seconds: float) -> list[Row]:
        names = self.names(count)
        command = f"sleep {seconds}"
        ideal = count / jobs * seconds
        results = self.alternate(
            {
                "batchrun": lambda: measure(
                    self.batchrun_cmd(names, str(self.fresh() / "p.txt"), command, jobs=jobs), self.env, self.work
                ),
                "floor": lambda: measure(
                    self.floor_cmd(
                        "local", names, str(self.fresh() / "done.txt"), ["sh", "-c", f"{command}", "x"], jobs
                    ),
                    self.env,
                    self.work,
                ),
            }
        )
        b, f = median(results["batchrun"]), median(results["floor"])
        return [
            Row(f"{count} evals x {seconds} s, --jobs {jobs}", f"{b:.2f} s", "ideal", f"{ideal:.2f} s",
                f"{b / ideal:.2f}x", "<= 1.25x", b / ideal <= 1.25),
            Row("", f"{b:.2f} s", "floor loop, 16 threads", f"{f:.2f} s", f"{b / f:.2f}x", "(reference)", None),
        ]  # fmt: skip

    def startup(self) -> list[Row]:
        run_dir = self.fresh()
        names = self.names(10)
        progress = str(run_dir / "p.txt")
        check([measure(self.batchrun_cmd(names, progress, "true"), self.env, self.work)], "batchrun")
        script = shutil.which("batchrun") or ""
        exe = [script] if script else self.batchrun
        results = self.alternate(
            {
                "help": lambda: measure([*exe, "--help"], self.env, self.work),
                "status": lambda: measure([*exe, "status", "--progress", progress], self.env, self.work),
                "python": lambda: measure([sys.executable, "-c", "pass"], self.env, self.work),
            }
        )
        py = median(results["python"])
        return [
            Row(f"start-up: batchrun {what}", f"{median(results[key]):.3f} s", "python -c pass", f"{py:.3f} s",
                f"+{median(results[key]) - py:.3f} s", "< 0.35 s", median(results[key]) < 0.35)
            for key, what in (("help", "--help"), ("status", "status (local)"))
        ]  # fmt: skip


def ratio_row(scenario: str, ours: float, baseline: str, theirs: float, target: str) -> Row:
    limit = float(target.removeprefix("<= ").removesuffix("x"))
    return Row(
        scenario, f"{ours:.2f} s", baseline, f"{theirs:.2f} s", f"{ours / theirs:.2f}x", target, ours / theirs <= limit
    )


def table(rows: list[Row]) -> str:
    head = ["scenario", "batchrun", "baseline", "baseline value", "ratio", "target", "met"]
    body = [[r.scenario, r.batchrun, r.baseline, r.baseline_value, r.ratio, r.target,
             {True: "yes", False: "NO", None: "-"}[r.met]] for r in rows]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke test")
    parser.add_argument("--runs", type=int, default=5, help="runs per contender (median reported)")
    parser.add_argument("--large-runs", type=int, default=3, help="runs of the 10,000-eval scenario")
    parser.add_argument("--only", nargs="*", default=None, help="local s3 large sleep startup")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    small, large, window = (40, 300, 100) if args.quick else (1000, 10_000, 1000)
    sleepers, jobs, nap = (16, 16, 0.2) if args.quick else (64, 16, 0.5)
    wanted = set(args.only or ["local", "s3", "large", "sleep", "startup"])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="batchrun-bench-") as tmp, moto_server() as url:
        bench = Bench(Path(tmp), runs, url)
        rss = None
        if "local" in wanted:
            rows += bench.local_noop(small)
        if "s3" in wanted:
            rows += bench.s3_noop(small)
        if "large" in wanted:
            large_rows, rss = bench.s3_large(large, window, 1 if args.quick else args.large_runs)
            rows += large_rows
        if "sleep" in wanted:
            rows += bench.parallel_sleep(sleepers, jobs, nap)
        if "startup" in wanted:
            rows += bench.startup()
        if rss is not None:
            rows.append(Row(f"{large} no-op evals, S3: peak RSS", f"{rss:.0f} MB", "", "", "", "< 150 MB", rss < 150))
    print(table(rows))
    print()
    cpu = platform.processor() or platform.machine()
    print(f"{dt.date.today()}, Python {platform.python_version()}, {os.cpu_count()} cores, {cpu}; runs={runs}")
    for note in bench.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
