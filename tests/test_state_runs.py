"""State folders through real runs: an eval killed or stopped halfway resumes on a new pod (an
empty local state root) from its last sync; results are kept, pulled and reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import BUCKET, TESTS, batchrun

from batchrun.location import resolve_location
from batchrun.progress import ProgressStore

STATEFUL = TESTS / "stateful_eval.py"
URI = f"s3://{BUCKET}/runs/m.s.progress.txt"

pytestmark = pytest.mark.slow


def command(journal: Path, *flags: str) -> str:
    return f"{sys.executable} {STATEFUL} {{state}} {{eval}} --journal {journal} {' '.join(flags)}".strip()


def entries(journal: Path, kind: str, name: str = "e") -> list[list[str]]:
    if not journal.exists():
        return []
    lines = [line.split() for line in journal.read_text().splitlines()]
    return [words for words in lines if words[:2] == [kind, name]]


def steps(journal: Path, name: str = "e") -> list[int]:
    return [int(words[2]) for words in entries(journal, "step", name)]


def run_args(root: Path, journal: Path, *flags: str, sync: float = 0.3) -> list[str]:
    return [
        "run", "m", str(root / "set.txt"), "--progress", URI, "--command", command(journal, *flags),
        "--state-root", str(root / f"pod-{time.monotonic_ns()}"), "--state-sync", str(sync),
        "--retry-backoff", "0", "--grace", "5",
    ]  # fmt: skip


def start(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.Popen[bytes]:
    with (tmp / f"batchrun-{time.monotonic_ns()}.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "batchrun", *args], env=env, stdout=log, stderr=log)


def until(check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.05)


def stored(path: str = "") -> list[str]:
    store = ProgressStore.open(resolve_location(URI, model="m", eval_set="s"))
    return sorted(store.backend.files(f"{store.location.sidecar}/{path}"))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "set.txt").write_text("e\n")
    return tmp_path, tmp_path / "journal"


def test_sigkill_loses_at_most_one_sync_interval_and_a_new_pod_resumes(
    setup: tuple[Path, Path], s3_env: dict[str, str]
) -> None:
    root, journal = setup
    sleep, sync = 0.1, 0.5
    proc = start(run_args(root, journal, "--steps", "30", "--sleep", str(sleep), sync=sync), s3_env, root)
    until(lambda: len(steps(journal)) >= 15)
    proc.send_signal(signal.SIGKILL)  # the node is gone: batchrun and the eval with it
    proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(entries(journal, "start")[-1][2]), signal.SIGKILL)
    before = steps(journal)
    done = batchrun(*run_args(root, journal, "--steps", "30", "--sleep", str(sleep), sync=sync), env=s3_env)
    assert done.returncode == 0, done.stderr
    again = steps(journal)[len(before) :]
    assert sorted(set(before) | set(again)) == list(range(1, 31))
    repeated = set(before) & set(again)
    assert len(repeated) <= sync / sleep + 2, repeated  # one sync interval of steps, and the one running
    assert "state/" not in " ".join(stored())  # kept as results, then the state went
    assert "results/e/metrics.json" in stored()


def test_a_stop_syncs_once_more_so_the_next_pod_repeats_nothing(
    setup: tuple[Path, Path], s3_env: dict[str, str]
) -> None:
    """With syncs far apart, only the final sync after the eval stopped can carry its progress."""
    root, journal = setup
    args = run_args(root, journal, "--steps", "20", "--sleep", "0.1", sync=600)
    proc = start([*args, "--stop-signal", "INT"], s3_env, root)
    until(lambda: len(steps(journal)) >= 8)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert entries(journal, "stopped")  # the eval saw SIGINT and exited 0: still an interrupted attempt
    before = steps(journal)
    status = batchrun("status", "--progress", URI, "--json", env=s3_env)
    assert json.loads(status.stdout)["done"] == 0
    done = batchrun(*args, env=s3_env)
    assert done.returncode == 0, done.stderr
    assert not set(before) & set(steps(journal)[len(before) :])


def test_an_eval_timeout_syncs_and_the_retry_resumes(setup: tuple[Path, Path], s3_env: dict[str, str]) -> None:
    root, journal = setup
    args = run_args(root, journal, "--steps", "12", "--sleep", "0.2", sync=600)
    done = batchrun(*args, "--eval-timeout", "1.2", "--max-attempts", "5", env=s3_env, timeout=90)
    assert done.returncode == 0, done.stderr
    assert len(entries(journal, "start")) >= 2
    assert sorted(steps(journal)) == list(range(1, 13))  # every step once: each retry went on


def test_results_are_pulled_and_reported(setup: tuple[Path, Path], s3_env: dict[str, str]) -> None:
    root, journal = setup
    (root / "set.txt").write_text("e\nweird [1]*%\n")
    done = batchrun(*run_args(root, journal, "--steps", "3"), env=s3_env)
    assert done.returncode == 0, done.stderr
    report = batchrun("report", "m", str(root / "set.txt"), "--progress", URI, "--json", env=s3_env)
    assert report.returncode == 0, report.stderr
    rows = {row["eval"]: row for row in json.loads(report.stdout)["evals"]}
    assert rows["e"]["metrics"]["accuracy"] == 1.0
    assert rows["weird [1]*%"]["state"] == "done"
    out = root / "out"
    pulled = batchrun("pull", "m", str(root / "set.txt"), "--progress", URI, "--to", str(out), env=s3_env)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads((out / "e" / "manifest.json").read_text()) == [1, 2, 3]
    weird = [p for p in out.iterdir() if p.name != "e"]
    assert len(weird) == 1
    assert (weird[0] / "steps" / "3").read_text() == "result of step 3"


def test_an_eval_without_state_gets_no_folder_and_costs_the_store_nothing(
    setup: tuple[Path, Path], s3_env: dict[str, str]
) -> None:
    root, _ = setup
    probe = f"{sys.executable} -c \"import os,sys; sys.exit(3 if 'BATCHRUN_STATE' in os.environ else 0)\""
    args = ["run", "m", str(root / "set.txt"), "--progress", URI, "--command", probe, "--max-attempts", "1"]
    done = batchrun(*args, "--state-root", str(root / "pod"), env=s3_env)
    assert done.returncode == 0, done.stderr
    assert not [name for name in stored() if name.startswith(("state/", "results/"))]
    assert not (root / "pod").exists()
    opted = batchrun(*args, "--state", "--state-root", str(root / "pod"), env=s3_env)
    assert opted.returncode == 0  # already done
    fresh = batchrun(*args, "--fresh", "--state", "--state-root", str(root / "pod"), env=s3_env)
    assert fresh.returncode == 1  # the probe saw BATCHRUN_STATE


def test_a_final_failure_keeps_state_and_retry_failed_starts_empty_unless_keep_state(
    setup: tuple[Path, Path], s3_env: dict[str, str]
) -> None:
    root, journal = setup
    args = run_args(root, journal, "--steps", "3", "--fail-always")
    failed = batchrun(*args, "--max-attempts", "2", env=s3_env)
    assert failed.returncode == 1
    assert [words[3:] for words in entries(journal, "start")] == [["[]"], ["['manifest.json',", "'steps']"]]
    assert any(re.match(r"state/[^/]+/e/", name) for name in stored())  # kept for debugging
    batchrun(*args, "--max-attempts", "1", "--retry-failed", env=s3_env)
    assert entries(journal, "start")[-1][3:] == ["[]"]
    batchrun(*args, "--max-attempts", "1", "--retry-failed", "--keep-state", env=s3_env)
    assert entries(journal, "start")[-1][3:] == ["['manifest.json',", "'steps']"]
    reset = batchrun("reset", "--progress", URI, "--yes", env=s3_env)
    assert reset.returncode == 0, reset.stderr
    assert stored() == []
