"""The state scenario (issue 9): what an eval's state folder costs on S3, every request counted at
bench/fleet.py's counting moto server.

1. **An inspect log folder as it grows.** Real inspect-ai runs the offline counting task
   (tests/data/inspect_task.py) into a log folder, which is copied every *every* seconds
   (snapshots, mtimes kept). The snapshots are then replayed: before each sync the eval's local
   folder is made to hold what the snapshot holds (a file is rewritten only if inspect changed it
   since the snapshot before), then ``EvalFolder.sync()`` is called and its requests counted.
   Attempt 1 syncs the first half of the snapshots; a new pod's attempt 2 restores, syncs the rest
   (its first sync copies unchanged files inside the store) and the completion keeps the folder as
   the eval's results (results.keep).
2. **A folder of N files** (4 KiB each): its first sync, syncs with one file changed, syncs of the
   unchanged folder (requests, and the local scan's time), then a new attempt's restore, its first
   sync after one change, and the keeping of its results.
3. **Whole runs** (`python -m batchrun run`) of no-op evals without ``{state}``, with ``{state}``
   left empty, and with ``{state}`` receiving one file, and one inspect eval as the README's recipe
   runs it; requests per eval, split into the state's own (``P.d/state/``, ``P.d/results/``) and the
   rest. With *before* (a git revision), the code of that revision runs too, as "today".

The server sees a server-side copy as a PUT (with a header it does not note), so the store's
backend is wrapped here to count copies, and the bytes of uploads, marker writes and downloads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import fleet
import structlog

from batchrun._state import Attempt
from batchrun._statefiles import Stat, scan
from batchrun.location import resolve_location
from batchrun.plan import StateConfig
from batchrun.progress import ProgressStore
from batchrun.results import keep
from batchrun.state import EvalFolder, StateKeeper

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "tests" / "data" / "inspect_task.py"
KINDS = ("PUT", "COPY", "HEAD", "GET", "LIST", "DELETE")
FILE_SIZE = 4096
AWS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


# --- counting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """What one operation on a state folder cost: S3 requests by kind (COPY: the PUT of a
    server-side copy), bytes sent (uploads and markers) and received (downloads).
    """

    requests: Counter[str]
    sent: int = 0
    received: int = 0

    @property
    def total(self) -> int:
        return sum(self.requests.values())


class Tally:
    """A store backend that notes what the server cannot tell apart: which PUTs were copies, and
    the bytes of uploads, writes and downloads.
    """

    def __init__(self, inner: Any) -> None:  # noqa: ANN401 - any Backend
        self.inner = inner
        self.copies = self.sent = self.received = 0

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - the wrapped backend's attributes
        return getattr(self.inner, name)

    def upload(self, local: str, path: str) -> None:
        self.inner.upload(local, path)
        self.sent += os.path.getsize(local)

    def write(self, path: str, data: bytes) -> None:
        self.inner.write(path, data)
        self.sent += len(data)

    def download(self, path: str, local: str) -> None:
        self.inner.download(path, local)
        self.received += os.path.getsize(local)

    def copy(self, source: str, path: str, expect: str | None = None) -> None:
        self.inner.copy(source, path, expect)
        self.copies += 1


class Meter:
    """Counts the requests one call makes to the counting server through *store*."""

    def __init__(self, url: str, store: ProgressStore) -> None:
        self.url = url
        self.store = store

    def __call__(self, work: Callable[[], T]) -> tuple[T, Cost]:
        fleet.take_requests(self.url)  # what came before is not this call's
        tally = Tally(self.store.backend)
        self.store.backend = tally
        try:
            result = work()
        finally:
            self.store.backend = tally.inner
        requests, _ = fleet.take_requests(self.url)
        kinds = Counter(r.kind for r in requests)
        kinds["PUT"] -= tally.copies
        kinds["COPY"] = tally.copies
        odd = {kind for kind, n in kinds.items() if n and kind not in KINDS}
        if odd or kinds["PUT"] < 0:
            raise SystemExit(f"state: unexpected requests {dict(kinds)}")
        return result, Cost(+kinds, tally.sent, tally.received)


@contextlib.contextmanager
def aws_environ(env: dict[str, str]) -> Iterator[None]:
    """The AWS settings of *env* in this process's environment (for the stores opened here)."""
    saved = {name: os.environ.get(name) for name in AWS}
    os.environ.update({name: env[name] for name in AWS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def open_store(bucket: str, tag: str) -> ProgressStore:
    return ProgressStore.open(resolve_location(f"s3://{bucket}/state/{tag}/m.s.progress.txt", model="m", eval_set="s"))


def attempt(name: str, number: int) -> Attempt:
    return Attempt(f"a{number}", name, number, "bench", time.time())


# --- folders ----------------------------------------------------------------------------------


def snapshot(source: Path, target: Path) -> None:
    """Copy the files of *source* (a folder being written) to *target*, with their mtimes."""
    for parent, _, names in os.walk(source):
        for name in names:
            path = Path(parent, name)
            copy = target / path.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile
                shutil.copy2(path, copy)


def replay(source: Path, target: Path, before: dict[str, Stat]) -> dict[str, Stat]:
    """Make *target* hold the files of *source*: those whose size or mtime differ from *before*
    (the snapshot applied last) are copied over with their mtimes, those not in *source* deleted;
    files the tool left alone keep their local mtime (after a restore, the download's).
    """
    files = scan(str(source))
    for name, info in files.items():
        if before.get(name) != info:
            copy = target / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, copy)
    for name in scan(str(target)).keys() - files.keys():
        (target / name).unlink()
    return files


def touch(path: Path, text: str) -> None:
    """Rewrite *path* whole with a new mtime (a sync compares size and mtime)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.ljust(FILE_SIZE, "."))
    stamp = time.time_ns()
    os.utime(path, ns=(stamp, stamp))


def size(folder: Path) -> tuple[int, int]:
    files = scan(str(folder))
    return len(files), sum(info[0] for info in files.values())


def record_inspect(work: Path, samples: int, delay: float, every: float) -> list[Path]:
    """Run real inspect-ai on the offline counting task into a log folder; copy the folder every
    *every* seconds while it runs, and once more at the end. The snapshots, in order.
    """
    logs, shots = work / "logs", work / "snapshots"
    command = [
        sys.executable, "-m", "inspect_ai", "eval-set", f"{TASK}@counting", "--model", "mockllm/model",
        "--log-dir", str(logs), "--log-shared", "2", "--max-samples", "1", "--display", "none",
        "-T", f"samples={samples}", "-T", f"delay={delay}",
    ]  # fmt: skip
    env = {**os.environ, "XDG_DATA_HOME": str(work / "data")}  # inspect's sample buffer, not the user's
    taken: list[Path] = []
    work.mkdir(parents=True)
    with (work / "inspect.log").open("wb") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=out)
        while True:
            ended = proc.poll() is not None
            if logs.exists():
                taken.append(shots / f"{len(taken):03d}")
                snapshot(logs, taken[-1])
            if ended:
                break
            time.sleep(every)
    if proc.returncode != 0:
        raise SystemExit(f"inspect exited {proc.returncode}: {(work / 'inspect.log').read_text()[-2000:]}")
    return taken


# --- one folder's life ------------------------------------------------------------------------


@dataclass
class Life:
    """The costs measured on one eval's folder."""

    label: str
    files: int  # at its largest
    size: int  # bytes, at its largest
    first_restore: Cost  # attempt 1, nothing stored yet
    syncs: list[Cost]  # every sync of both attempts, in order
    restore: Cost  # attempt 2, a new pod
    first: Cost  # attempt 2's first sync that sent anything
    kept: Cost  # the completion's results.keep
    split: int = 0  # inspect: where attempt 2's syncs start
    changed: list[Cost] | None = None  # N files: syncs with one file changed
    unchanged: list[Cost] | None = None  # ... of the unchanged folder
    scan_ms: float | None = None  # ... their local time (median)


class Lives:
    """Folders on one store of the counting server, each eval under a name of its own."""

    def __init__(self, url: str, bucket: str, work: Path) -> None:
        self.store = open_store(bucket, "folders")
        self.meter = Meter(url, self.store)
        self.work = work
        self.pods = 0

    def keeper(self) -> StateKeeper:
        """A keeper on a new pod (an empty local state root)."""
        self.pods += 1
        return StateKeeper(self.store, StateConfig(str(self.work / f"pod{self.pods}")), "m", "s")

    @contextlib.contextmanager
    def folder(self, name: str, number: int) -> Iterator[tuple[EvalFolder, Cost]]:
        """Attempt *number*'s folder on a new pod, with what its restore cost."""
        with contextlib.ExitStack() as stack:
            held, cost = self.meter(lambda: stack.enter_context(self.keeper().folder(attempt(name, number))))
            yield held, cost

    def sync(self, folder: EvalFolder) -> Cost:
        return self.meter(folder.sync)[1]

    def inspect(self, snapshots: list[Path], label: str) -> Life:
        """Attempt 1 syncs the first half of *snapshots*, attempt 2 the rest, then its results are kept."""
        name, half = "inspect", max(1, len(snapshots) // 2)
        syncs: list[Cost] = []
        seen: dict[str, Stat] = {}
        with self.folder(name, 1) as (folder, first_restore):
            for shot in snapshots[:half]:
                seen = replay(shot, Path(folder.local), seen)
                syncs.append(self.sync(folder))
        with self.folder(name, 2) as (folder, restore):
            own = len(syncs)
            for shot in snapshots[half:]:
                seen = replay(shot, Path(folder.local), seen)
                syncs.append(self.sync(folder))
            kept = self.meter(lambda: keep(self.store, name, 2))[1]
        first = next((c for c in syncs[own:] if c.total), Cost(Counter()))
        sizes = [size(shot) for shot in snapshots]
        files, total = max(n for n, _ in sizes), max(b for _, b in sizes)
        life = Life(f"{label}, {len(snapshots)} snapshots", files, total, first_restore, syncs, restore, first, kept)
        life.split = own
        return life

    def files(self, count: int, rounds: int, idle: int) -> Life:
        """A folder of *count* files: its first sync, *rounds* syncs with one file changed, *idle*
        syncs of the unchanged folder; then a new attempt's restore, first sync and keeping.
        """
        name = f"files-{count}"
        with self.folder(name, 1) as (folder, first_restore):
            local = Path(folder.local)
            for i in range(count):
                touch(local / f"d{i // 100:02d}" / f"f{i:05d}", f"file {i}")
            syncs = [self.sync(folder)]
            changed = []
            for i in range(rounds):
                touch(local / "d00" / f"f{i % count:05d}", f"file {i}, round {i}")
                changed.append(self.sync(folder))
            unchanged, times = [], []
            for _ in range(idle):
                started = time.perf_counter()
                if folder.sync():
                    raise SystemExit("state: a sync of an unchanged folder sent something")
                times.append(time.perf_counter() - started)
                unchanged.append(self.sync(folder))
        with self.folder(name, 2) as (folder, restore):
            touch(Path(folder.local) / "d00" / "f00000", "changed by attempt 2")
            first = self.sync(folder)
            kept = self.meter(lambda: keep(self.store, name, 2))[1]
        label = f"{count} files of {FILE_SIZE // 1024} KiB"
        files, total = count, count * FILE_SIZE
        life = Life(label, files, total, first_restore, [*syncs, *changed, *unchanged], restore, first, kept)
        life.changed, life.unchanged, life.scan_ms = changed, unchanged, statistics.median(times) * 1000
        return life


# --- whole runs -------------------------------------------------------------------------------


@dataclass
class RunCount:
    """Requests of whole `batchrun run`s of one command, per eval (means over the runs)."""

    label: str
    evals: int
    kinds: Counter[str]  # all requests, by kind (DELETE: DeleteObjects; a copy is a PUT here)
    state: float  # under P.d/state/ and P.d/results/
    rest: float
    wall: float  # median seconds per run

    @property
    def total(self) -> float:
        return self.state + self.rest


def state_area(request: fleet.Request) -> bool:
    top = request.key.partition(".progress.txt.d/")[2].split("/", 1)[0]
    return top in ("state", "results")


def old_tree(revision: str, work: Path) -> Path:
    """The batchrun package of *revision* (``git archive``), to run as "today"."""
    target = work / f"batchrun-{revision}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "batchrun"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


@dataclass(frozen=True)
class Contender:
    """One `batchrun run` command of the whole runs."""

    label: str
    command: str
    names: Path
    env: dict[str, str]
    model: str = "bench"
    options: tuple[str, ...] = ()


def contenders(
    *, env: dict[str, str], work: Path, names: Path, before: str | None, inspect: Sizes | None
) -> list[Contender]:
    """Today's code (with *before*), no ``{state}``, ``{state}`` left empty or given one file, and
    (with *inspect*) real inspect-ai on the counting task as the README's recipe runs it.
    """
    found = []
    if before:
        old = {**env, "PYTHONPATH": str(old_tree(before, work))}
        found.append(Contender(f"today ({before}), no {{state}}", "true {eval}", names, old))
    write = 'sh -c \'echo "$1" > "$0/result.txt"\' {state} {eval}'
    found += [
        Contender("no {state}", "true {eval}", names, env),
        Contender("{state}, left empty", "true {eval} {state}", names, env),
        Contender("{state}, one file written", write, names, env),
    ]
    if inspect is not None:
        task = work / "inspect-task.txt"
        task.write_text(f"{TASK}@counting\n")
        command = (
            "inspect eval-set {eval} --model {model} --log-dir {state} --log-shared 2 --max-samples 1 "
            f"--display none -T samples={inspect.samples} -T delay={inspect.delay}"
        )
        label = f"inspect, {inspect.samples} samples, --state-sync {inspect.every:g}"
        options = ("--state-sync", f"{inspect.every:g}", "--stop-signal", "INT")
        data = {**env, "XDG_DATA_HOME": str(work / "inspect-data")}
        found.append(Contender(label, command, task, data, "mockllm/model", options))
    return found


def whole_runs(  # noqa: PLR0913 - the bench's parts a run needs
    *,
    batchrun: list[str],
    work: Path,
    url: str,
    reset: Callable[[], None],
    runs: int,
    bucket: str,
    contenders: list[Contender],
) -> list[RunCount]:
    """`batchrun run` of each of *contenders*, alternating, *runs* times each, on a fresh store."""
    counted: dict[str, list[tuple[list[fleet.Request], float]]] = {c.label: [] for c in contenders}
    for _ in range(runs):
        for contender in contenders:
            reset()
            fleet.take_requests(url)
            root = work / f"run-{sum(map(len, counted.values()))}"
            root.mkdir(parents=True)
            argv = [*batchrun, "run", contender.model, str(contender.names), "--progress", f"s3://{bucket}/p/"]
            argv += ["--command", contender.command, "--jobs", "1", *contender.options]
            if "{state}" in contender.command:
                argv += ["--state-root", str(root / "state")]
            started = time.perf_counter()
            done = subprocess.run(argv, env=contender.env, cwd=root, capture_output=True, check=False)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"{contender.label}: batchrun exited {done.returncode}: {done.stderr[-1000:]!r}")
            counted[contender.label].append((fleet.take_requests(url)[0], wall))
    found = []
    for contender in contenders:
        samples = counted[contender.label]
        evals = len(contender.names.read_text().split())
        scale = evals * len(samples)
        every = [r for requests, _ in samples for r in requests]
        kinds = Counter({kind: n / scale for kind, n in Counter(r.kind for r in every).items()})
        state = sum(1 for r in every if state_area(r)) / scale
        wall = statistics.median(w for _, w in samples)
        found.append(RunCount(contender.label, evals, kinds, state, len(every) / scale - state, wall))
    return found


# --- the scenario -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How big the scenario runs."""

    samples: int  # inspect's
    delay: float  # seconds per sample
    every: float  # seconds between snapshots
    counts: tuple[int, ...]  # folder sizes, in files
    rounds: int  # syncs with one file changed
    idle: int  # syncs of the unchanged folder
    evals: int  # of each whole run
    runs: int  # whole runs of each command


QUICK = Sizes(samples=6, delay=0.3, every=0.5, counts=(10, 50), rounds=2, idle=5, evals=4, runs=1)
FULL = Sizes(samples=30, delay=0.3, every=0.5, counts=(10, 100, 1000), rounds=5, idle=20, evals=16, runs=3)


def measure(  # noqa: PLR0913 - the bench's parts
    *,
    batchrun: list[str],
    env: dict[str, str],
    work: Path,
    url: str,
    reset: Callable[[], None],
    names: Callable[[int], Path],
    sizes: Sizes,
    before: str | None,
    bucket: str,
    notes: list[str],
) -> tuple[list[tuple[str, str, str, str, str, str, bool | None]], str]:
    """The whole scenario on the counting server at *url*: summary rows (the fields of run.py's
    Row) and the detail tables.
    """
    reset()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # the stores' here
    lives: list[Life] = []
    inspect = importlib.util.find_spec("inspect_ai") is not None
    if not inspect:
        notes.append("inspect-ai not installed (`pip install inspect-ai`): the inspect log folder skipped.")
    with aws_environ(env):
        folders = Lives(url, bucket, work / "folders")
        if inspect:
            shots = record_inspect(work / "inspect", sizes.samples, sizes.delay, sizes.every)
            lives.append(folders.inspect(shots, f"inspect log folder, {sizes.samples} samples"))
        lives += [folders.files(count, sizes.rounds, sizes.idle) for count in sizes.counts]
    runs = contenders(env=env, work=work, names=names(sizes.evals), before=before, inspect=sizes if inspect else None)
    counts = whole_runs(
        batchrun=batchrun, work=work, url=url, reset=reset, runs=sizes.runs, bucket=bucket, contenders=runs
    )
    return summary(lives, counts), "\n\n".join([sync_table(lives), size_table(lives), runs_table(counts)])


# --- tables -----------------------------------------------------------------------------------


def kinds(cost: Cost) -> str:
    return " ".join(f"{n} {kind}" for kind in KINDS if (n := cost.requests[kind])) or "none"


def kilobytes(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def sync_table(lives: list[Life]) -> str:
    """Per sync over a replayed folder's whole life: median and max requests and bytes, totals; then
    every folder's restore, first sync of a new attempt and keeping.
    """
    replayed = [life for life in lives if life.changed is None]
    lines = [
        "State syncs on S3, every sync of the folder's life (both attempts; a sync of an unchanged folder",
        "sends nothing and counts as 0):",
        "",
        (
            "| folder | files, size (largest) | syncs | that sent | requests per sync: median / max | ... of those "
            "that sent: median | bytes up per sync: median / max | total requests (by kind) | total bytes up |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for life in replayed:
        totals = [c.total for c in life.syncs]
        sent = [c.total for c in life.syncs if c.total]
        up = [c.sent for c in life.syncs]
        whole = Cost(sum((c.requests for c in life.syncs), Counter()), sum(up))
        lines.append(
            f"| {life.label} | {life.files}, {kilobytes(life.size)} | {len(totals)} | {len(sent)} | "
            f"{statistics.median(totals):g} / {max(totals)} | {statistics.median(sent) if sent else 0:g} | "
            f"{kilobytes(statistics.median(up))} / {kilobytes(max(up))} | {whole.total} ({kinds(whole)}) | "
            f"{kilobytes(whole.sent)} |"
        )
    lines.append("")
    for life in replayed:
        lines += [
            f"Each sync in order, requests / KiB up (| before attempt 2's; {life.label}):",
            "",
            " ".join(f"{'| ' * (i == life.split)}{c.total}/{c.sent / 1024:.1f}" for i, c in enumerate(life.syncs)),
            "",
        ]
    lines += [
        "A new attempt and the completion (requests, by kind; COPY is a copy inside the store, and s3fs",
        "sends a HEAD of its source before each):",
        "",
        (
            "| folder | restore, nothing stored | restore on a new pod | bytes down | its first sync | bytes up "
            "| keep as results |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for life in lives:
        lines.append(
            f"| {life.label} | {life.first_restore.total} ({kinds(life.first_restore)}) | "
            f"{life.restore.total} ({kinds(life.restore)}) | {kilobytes(life.restore.received)} | "
            f"{life.first.total} ({kinds(life.first)}) | {kilobytes(life.first.sent)} | "
            f"{life.kept.total} ({kinds(life.kept)}) |"
        )
    return "\n".join(lines)


def size_table(lives: list[Life]) -> str:
    """Sync cost against the folder's size."""
    lines = [
        "Against the folder's size (one file of 4 KiB changed per sync; medians):",
        "",
        "| folder | first sync | one file changed: requests | bytes up | unchanged: requests | local scan |",
        "|---|---|---|---|---|---|",
    ]
    for life in lives:
        if life.changed is None or life.unchanged is None:
            continue
        lines.append(
            f"| {life.label} | {life.syncs[0].total} ({kinds(life.syncs[0])}) | "
            f"{statistics.median(c.total for c in life.changed):g} ({kinds(life.changed[-1])}) | "
            f"{kilobytes(statistics.median(c.sent for c in life.changed))} | "
            f"{max(c.total for c in life.unchanged)} | {life.scan_ms:.2f} ms |"
        )
    return "\n".join(lines)


def runs_table(counts: list[RunCount]) -> str:
    kinds_seen = [k for k in ("GET", "HEAD", "LIST", "PUT", "DELETE") if any(c.kinds[k] for c in counts)]
    lines = [
        "Whole runs (`batchrun run --jobs 1`: no-op evals, then one real inspect eval), S3 requests per eval,",
        "mean of the runs; state is everything under `P.d/state/` and `P.d/results/` (here a copy is a PUT):",
        "",
        "| command | evals | " + " | ".join(kinds_seen) + " | total | state | the rest | wall (median) |",
        "|---|---|" + "---|" * (len(kinds_seen) + 4),
    ]
    for c in counts:
        cells = " | ".join(f"{c.kinds[k]:.2f}" for k in kinds_seen)
        lines.append(
            f"| {c.label} | {c.evals} | {cells} | {c.total:.2f} | {c.state:.2f} | {c.rest:.2f} | {c.wall:.2f} s |"
        )
    return "\n".join(lines)


def summary(lives: list[Life], counts: list[RunCount]) -> list[tuple[str, str, str, str, str, str, bool | None]]:
    """The rows for run.py's main table: an unchanged folder, one change against the folder's size,
    an eval without {state} against today (or, without a revision for today, against {state}).
    """
    rows: list[tuple[str, str, str, str, str, str, bool | None]] = []
    sized = [life for life in lives if life.changed is not None]
    small, big = sized[0], sized[-1]
    idle = max(c.total for c in big.unchanged or [])
    rows.append((f"state sync, unchanged folder, {big.label}", f"{idle} requests", "issue: one listing", "1",
                 "", "<= 1", idle <= 1))  # fmt: skip
    one = statistics.median(c.total for c in big.changed or [])
    base = statistics.median(c.total for c in small.changed or [])
    rows.append((f"state sync, one file changed, {big.label}", f"{one:g} requests", small.label, f"{base:g}",
                 f"{one / base:.2f}x", "<= 1.25x", one / base <= 1.25))  # fmt: skip
    by_label = {c.label: c for c in counts}
    plain = by_label["no {state}"]
    today = next((c for c in counts if c.label.startswith("today")), None)
    if today is not None:
        ratio = plain.total / today.total
        rows.append(("S3 requests per eval, no {state}", f"{plain.total:.2f}", today.label, f"{today.total:.2f}",
                     f"{ratio:.2f}x", "<= 1.05x", ratio <= 1.05))  # fmt: skip
    else:
        rows.append(("S3 requests per eval, no {state}", f"{plain.total:.2f}", "today: --state-before REV", "",
                     "", "<= 1.05x", None))  # fmt: skip
    for label in ("{state}, left empty", "{state}, one file written"):
        other = by_label[label]
        rows.append((f"... {label}", f"{other.total:.2f}", "no {state}", f"{plain.total:.2f}",
                     f"+{other.total - plain.total:.2f}", "(reference)", None))  # fmt: skip
    return rows
