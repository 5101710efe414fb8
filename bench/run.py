"""batchrun's own cost, measured side by side with the simplest alternatives in one invocation.

Usage: python bench/run.py [--quick] [--runs N] [--fleet-runs N] [--state-before REV] [--local-also NAME=DIR]
                           [--only NAME ...]

Each scenario runs batchrun and its baselines alternately, N times each (median reported), on
no-op or sleeping evals, so only the runners' own cost shows. S3 is a moto server started here on
127.0.0.1. GNU parallel and openai/evals' oaievalset are used where installed, else skipped with a
note. The fleet scenario starts W workers at once on one store, on a moto server of its own that
counts every S3 request (bench/fleet.py), and so does the state scenario's (evals' state folders,
bench/state.py). --quick shrinks every scenario (CI runs it as a smoke test; its numbers mean little).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fleet
import state

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


def moto_server() -> contextlib.AbstractContextManager[str]:
    """Moto's own server in a process of its own; yields its URL."""
    return fleet.server_process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p"])


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
        self.also: dict[str, str] = {}

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
        for name, tree in self.also.items():  # other versions of batchrun, from source trees
            env = {**self.env, "PYTHONPATH": tree}
            contenders[f"batchrun {name}"] = lambda env=env: measure(
                self.batchrun_cmd(names, str(self.fresh() / "p.txt"), "true {eval}"), env, self.work
            )
        results = self.alternate(contenders)
        b = median(results["batchrun"])
        rows = [
            ratio_row(f"{count} no-op evals, local, --jobs 1", b, "floor loop", median(results["floor"]), "<= 1.5x")
        ]
        if "parallel" in results:
            p = median(results["parallel"])
            rows.append(Row(rows[0].scenario, f"{b:.2f} s", "GNU parallel --joblog", f"{p:.2f} s",
                            f"{p / b:.2f}x faster", ">= 3x faster", p / b >= 3))  # fmt: skip
        for name in self.also:
            a, f = median(results[f"batchrun {name}"]), median(results["floor"])
            rows.append(Row(f"... batchrun {name}", f"{a:.2f} s", "floor loop", f"{f:.2f} s", f"{a / f:.2f}x",
                            "(reference)", None))  # fmt: skip
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
                f"+{median(results[key]) - py:.3f} s", f"< {limit} s", median(results[key]) < limit)
            for key, what, limit in (("help", "--help", 0.25), ("status", "status (local)", 0.35))
        ]  # fmt: skip

    def many_workers(
        self, workers: tuple[int, ...], evals: int, seconds: float, scaling: tuple[int, tuple[int, ...]], runs: int
    ) -> tuple[list[Row], str]:
        """*evals* sleeping evals on one store with each of *workers* processes (the rounds alternate
        between them); then *scaling*'s worker count on no-op sets of each size. Every worker must
        exit 0 and `status` must say every eval is done. Returns the rows and the detail tables.
        """
        sleeper = f"sh -c 'sleep {seconds:g}' {{eval}}"
        progress = f"s3://{BUCKET}/fleet/run.progress.txt"
        with fleet.counting_moto() as url:
            env = {**self.env, "AWS_ENDPOINT_URL": url}

            def once(count: int, names: Path, command: str) -> fleet.FleetRun:
                reset_s3(url)
                work = self.fresh()
                run = fleet.launch(
                    self.batchrun, env, work, url, workers=count, names=names, command=command, progress=progress
                )
                if any(run.codes):
                    raise SystemExit(f"fleet of {count}: workers exited with {run.codes} (logs in {work})")
                fleet.check_done(self.batchrun, env, work, progress, run.evals)
                return run

            timed: dict[int, list[fleet.FleetRun]] = {count: [] for count in workers}
            for _ in range(runs):
                for count in workers:
                    timed[count].append(once(count, self.names(evals), sleeper))
            many, sizes = scaling
            scaled = {size: [once(many, self.names(size), "true {eval}") for _ in range(runs)] for size in sizes}
        groups = [(f"{plural(count)}, {evals} x {seconds:g} s", rs) for count, rs in timed.items()]
        groups += [(f"{plural(many)}, {size} x no-op", rs) for size, rs in scaled.items()]
        detail = "\n\n".join([fleet.timing_table(groups[: len(workers)], seconds), fleet.requests_tables(groups)])
        return fleet_rows(timed, scaled, seconds), detail

    def state_folders(self, sizes: state.Sizes, before: str | None) -> tuple[list[Row], str]:
        """What evals' state folders cost, on a counting moto server of their own (bench/state.py)."""
        with fleet.counting_moto() as url:
            found, detail = state.measure(
                batchrun=self.batchrun, env={**self.env, "AWS_ENDPOINT_URL": url}, work=self.fresh(), url=url,
                reset=lambda: reset_s3(url), names=self.names, sizes=sizes, before=before, bucket=BUCKET,
                notes=self.notes,
            )  # fmt: skip
        return [Row(*row) for row in found], detail


def ratio_row(scenario: str, ours: float, baseline: str, theirs: float, target: str) -> Row:
    limit = float(target.removeprefix("<= ").removesuffix("x"))
    return Row(
        scenario, f"{ours:.2f} s", baseline, f"{theirs:.2f} s", f"{ours / theirs:.2f}x", target, ours / theirs <= limit
    )


def plural(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}"


def fleet_rows(
    timed: dict[int, list[fleet.FleetRun]], scaled: dict[int, list[fleet.FleetRun]], seconds: float
) -> list[Row]:
    """The fleet's summary rows: wall time against the ideal and against one worker (the targets
    apply to the largest fleet: 1.6x the ideal, that is W / 1.6 times faster than one worker), and
    requests per eval without the fleet's own (workers/) and listings, across W and across E.
    """
    walls = {count: statistics.median(r.wall for r in runs) for count, runs in timed.items()}
    one, top = min(walls), max(walls)
    evals = timed[one][0].evals
    rows = []
    for count, wall in walls.items():
        ideal = evals * seconds / count
        judged = count == top
        rows.append(Row(f"{evals} evals x {seconds:g} s, S3, {plural(count)}", f"{wall:.2f} s",
                        "ideal (evals x s / workers)", f"{ideal:.2f} s", f"{wall / ideal:.2f}x",
                        "<= 1.6x" if judged else "(reference)", wall / ideal <= 1.6 if judged else None))  # fmt: skip
        if count != one:
            goal = count / 1.6
            rows.append(Row("", f"{walls[one] / wall:.1f}x faster", plural(one), f"{walls[one]:.2f} s", "",
                            f">= {goal:g}x" if judged else "(reference)",
                            walls[one] / wall >= goal if judged else None))  # fmt: skip

    def steady(runs: list[fleet.FleetRun]) -> float:
        return sum(fleet.steady(r) for r in runs) / sum(r.evals for r in runs)

    small, big = min(scaled), max(scaled)
    many = scaled[small][0].workers
    by_workers = steady(timed[top]) / steady(timed[one])
    by_evals = steady(scaled[big]) / steady(scaled[small])
    return [
        *rows,
        Row(f"S3 requests per eval, no workers/ or LIST: {plural(top)}", f"{steady(timed[top]):.2f}", plural(one),
            f"{steady(timed[one]):.2f}", f"{by_workers:.2f}x", "<= 1.25x", by_workers <= 1.25),
        Row(f"... {plural(many)}, {big} no-op evals", f"{steady(scaled[big]):.2f}", f"{small} no-op evals",
            f"{steady(scaled[small]):.2f}", f"{by_evals:.2f}x", "<= 1.25x", by_evals <= 1.25),
    ]  # fmt: skip


def table(rows: list[Row]) -> str:
    head = ["scenario", "batchrun", "baseline", "baseline value", "ratio", "target", "met"]
    body = [[r.scenario, r.batchrun, r.baseline, r.baseline_value, r.ratio, r.target,
             {True: "yes", False: "NO", None: "-"}[r.met]] for r in rows]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def main() -> int:  # noqa: C901, PLR0915 - one branch per scenario
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke test")
    parser.add_argument("--runs", type=int, default=5, help="runs per contender (median reported)")
    parser.add_argument("--large-runs", type=int, default=3, help="runs of the 10,000-eval scenario")
    parser.add_argument("--fleet-runs", type=int, default=3, help="runs of each fleet size (median reported)")
    parser.add_argument("--only", nargs="*", default=None, help="local s3 large sleep startup fleet state")
    parser.add_argument("--state-before", metavar="REV", help="state: also run this git revision's batchrun, as today")
    parser.add_argument(
        "--local-also", metavar="NAME=DIR", action="append", default=[],
        help="local: also run the batchrun in source tree DIR (e.g. from git archive), alternating with the rest",
    )  # fmt: skip
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    small, large, window = (40, 300, 100) if args.quick else (1000, 10_000, 1000)
    sleepers, jobs, nap = (16, 16, 0.2) if args.quick else (64, 16, 0.5)
    fleets, fleet_evals, fleet_nap, scaling = (
        ((1, 2), 8, 0.2, (2, (8, 32))) if args.quick else ((1, 4, 16), 64, 1.0, (4, (64, 256)))
    )
    wanted = set(args.only or ["local", "s3", "large", "sleep", "startup", "fleet", "state"])
    rows: list[Row] = []
    details: list[str] = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="batchrun-bench-") as tmp, moto_server() as url:
        bench = Bench(Path(tmp), runs, url)
        bench.also = dict(item.split("=", 1) for item in args.local_also)
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
        if "fleet" in wanted:
            found, detail = bench.many_workers(
                fleets, fleet_evals, fleet_nap, scaling, 1 if args.quick else args.fleet_runs
            )
            rows += found
            details.append(detail)
        if "state" in wanted:
            sizes = state.QUICK if args.quick else dataclasses.replace(state.FULL, runs=args.runs)
            found, detail = bench.state_folders(sizes, args.state_before)
            rows += found
            details.append(detail)
    print(table(rows))
    print()
    for detail in details:
        print(detail)
        print()
    cpu = platform.processor() or platform.machine()
    fleet_runs = f", fleet runs={1 if args.quick else args.fleet_runs}" if "fleet" in wanted else ""
    print(
        f"{dt.date.today()}, Python {platform.python_version()}, {os.cpu_count()} cores, {cpu}; runs={runs}{fleet_runs}"
    )
    print(f"load average (1 min) at the start {load:.2f}, at the end {os.getloadavg()[0]:.2f}")
    for note in bench.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
