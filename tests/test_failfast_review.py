"""Review of fail-fast (1564e0f, e86f13e): the verdict, the requeued retry of a failed first attempt,
and `eval.started` logged once the start is durable.

The review found seven defects; six are fixed and their reproductions pass. The one marked
xfail(strict=True) is a documented limitation (README, "A command broken for every eval"). The
rest are what was tried and held.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import batchrun, open_store, slow_event_writes
from hypothesis import assume, given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from batchrun import CommandTemplate, EvalSet, RunPlan
from batchrun._console import Console
from batchrun._failfast import FAST_S, MAX_LINE, Ending
from batchrun.errors import StoppedEarlyError
from batchrun.runner import Runner


def runner_for(tmp_path: Path, command: str, names: tuple[str, ...], store: Any = None, **plan: Any) -> Runner:
    store = store or open_store(str(tmp_path / "p.txt"))
    console = Console(out=io.BytesIO(), err=io.StringIO(), bar=False)
    return Runner(RunPlan("m", EvalSet("s", names, "test"), CommandTemplate.parse(command), **plan), store, console)


def run_cli(tmp_path: Path, command: str, *flags: str, evals: str = "abcd") -> subprocess.CompletedProcess[str]:
    """`batchrun run` on a set of one-letter evals; stderr decoded with replacement (evals' raw
    output passes through batchrun's stderr).
    """
    (tmp_path / "s.txt").write_text("".join(f"{name}\n" for name in evals))
    args = ["run", "m", "s.txt", "--progress", f"{tmp_path}/p/", "--command", command, *flags]
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def states(tmp_path: Path) -> dict[str, tuple[str, int]]:
    status = batchrun("status", "m", "s.txt", "--progress", f"{tmp_path}/p/", "--json", cwd=tmp_path)
    return {e["name"]: (e["state"], e["attempts"]) for e in json.loads(status.stdout)["evals"]}


# --- defects ------------------------------------------------------------------------------


def test_fixing_the_command_and_running_again_as_the_verdict_says_runs_the_set(tmp_path: Path) -> None:
    broken = run_cli(tmp_path, "sh -c 'echo no such flag >&2; exit 2' {eval}")
    assert broken.returncode == 1
    assert "fix the command and run again" in broken.stderr.strip().splitlines()[-1]
    fixed = run_cli(tmp_path, "sh -c 'exit 0' {eval}")
    assert fixed.returncode == 0, fixed.stderr.strip().splitlines()[-1]
    changed = [json.loads(line) for line in fixed.stderr.splitlines() if '"run.command_changed"' in line]
    assert [(e["model"], e["eval_set"]) for e in changed] == [("m", "s")]
    assert [e["change"] for e in changed] == [
        "command was \"sh -c 'echo no such flag >&2; exit 2' {eval}\", now \"sh -c 'exit 0' {eval}\""
    ]


# Lines that name the eval inside a path, a module or a sentence: the eval's own name is what varies.
_PREFIXES = ("No such file: tasks/", "No module named evals.", "unknown task ", "error: ", "cannot load '", "")
_SUFFIXES = (".py", ".", "-v2 not found", ".yaml", "", "'", ": not found", "/config.json")
_NAMES = st.from_regex(r"[a-z][a-z0-9_]{1,12}", fullmatch=True)


@given(st.lists(_NAMES, min_size=3, max_size=3, unique=True), st.sampled_from(_PREFIXES), st.sampled_from(_SUFFIXES))
def test_the_eval_name_is_set_aside_wherever_the_line_names_it(names: list[str], prefix: str, suffix: str) -> None:
    assume(all(name not in prefix + suffix for name in names))
    endings = [Ending(n, failed=True, exit_code=2, last_line=f"{prefix}{n}{suffix}", duration=0.1) for n in names]
    assert len({e.signature() for e in endings}) == 1


def test_a_ctrl_c_just_before_the_verdict_keeps_the_grace_and_the_exit_code(tmp_path: Path) -> None:
    """a, b and c fail at once alike; d saves its work on SIGINT (1 s). The user's Ctrl-C arrives
    while the third failure is being recorded, before it is judged (simulated by hooking the judge).
    """
    saved = tmp_path / "saved"
    script = tmp_path / "e.sh"
    script.write_text(
        'case "$1" in\n'
        f"  d) trap 'sleep 1; echo saved > {saved}; exit 0' INT TERM; sleep 30 & wait;;\n"
        '  *) echo "broken: $1" >&2; exit 2;;\n'
        "esac\n"
    )
    runner = runner_for(tmp_path, f"sh {script} {{eval}}", ("d", "a", "b", "c"), jobs=4, stop_signal=signal.SIGINT)
    judge = runner.attempts._judge  # noqa: SLF001 - the window between an eval's end and its verdict
    failures = 0

    def judged(name: str, result: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if not result.interrupted and result.exit_code != 0:
            failures += 1
            if failures == 3:
                runner.stop.request(signal.SIGINT)  # the user's one Ctrl-C
        return judge(name, result, *args, **kwargs)

    runner.attempts._judge = judged  # type: ignore[method-assign] # noqa: SLF001
    with capture_logs():
        try:
            exit_code = runner.run().exit_code
        except StoppedEarlyError:
            exit_code = 1
    assert not runner.stop.urgent.is_set()
    assert saved.exists(), "d was killed without its grace"
    assert exit_code == 128 + signal.SIGINT


def test_an_eval_stopped_on_a_slow_store_is_shown_started_before_interrupted(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "p.txt"))
    slow_event_writes(store, 1.0)
    runner = runner_for(tmp_path, "sh -c 'sleep 30' {eval}", ("a",), store=store, grace=5)
    timer = threading.Timer(0.4, runner.stop.request, args=(signal.SIGTERM,))
    timer.start()
    with capture_logs() as logs:
        assert runner.run().exit_code == 128 + signal.SIGTERM
    order = [e["event"] for e in logs if e.get("eval") == "a"]
    assert order == ["eval.started", "eval.interrupted"]


def test_a_stop_while_requeued_retries_wait_exits_at_once(tmp_path: Path) -> None:
    """Evals a and b fail at once (their retries wait in the queue, 15 s or more), c completes;
    nothing runs when the stop comes.
    """
    command = "sh -c 'case $0 in c) exit 0;; *) exit 2;; esac' {eval}"
    runner = runner_for(tmp_path, command, ("a", "b", "c"), retry_backoff=30)
    stopped = 0.0

    def stop() -> None:
        nonlocal stopped
        stopped = time.monotonic()
        runner.stop.request(signal.SIGTERM)

    timer = threading.Timer(0.8, stop)
    timer.start()
    with capture_logs() as logs:
        assert runner.run().exit_code == 128 + signal.SIGTERM
    assert [e["eval"] for e in logs if e["event"] == "eval.completed"] == ["c"]
    assert time.monotonic() - stopped < 0.5


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="documented limitation: fail-fast counts only this process's probes; with two workers each "
    "holds two evals, neither reaches three, and every eval uses its attempts as without fail-fast",
)
def test_a_command_broken_for_every_eval_stops_early_with_two_workers_too(tmp_path: Path) -> None:
    """Two workers, two slots each, four evals; every first attempt waits until all four have
    started (each worker holds two), then fails as the others do.
    """
    (tmp_path / "s.txt").write_text("a\nb\nc\nd\n")
    started = tmp_path / "started"
    script = tmp_path / "e.sh"
    script.write_text(
        f"echo $1 >> {started}\n"
        f'if [ "$2" = 1 ]; then for _ in $(seq 1000); do\n'
        f"  [ $(wc -l < {started}) -ge 4 ] && break; sleep 0.02\n"
        "done; fi\n"
        "echo broken >&2\n"
        "exit 2\n"
    )
    command = f"sh {script} {{eval}} {{attempt}}"
    args = ["run", "m", "s.txt", "--progress", f"{tmp_path}/p/", "--command", command, "--jobs", "2"]
    args += ["--retry-backoff", "0.1", "--heartbeat", "0.2", "--worker-timeout", "1"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "batchrun", *args, "--worker-id", f"w{w}"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(2)
    ]
    stderr = "".join(proc.communicate(timeout=60)[1] for proc in procs)
    assert "stopped early" in stderr
    assert all(state != "failed" for state, _ in states(tmp_path).values())


def test_the_verdict_names_a_signal_death_as_one(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "sh -c 'kill -KILL $$' {eval}")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("batchrun: error: stopped early")
    assert "exit -9" not in last
    assert "signal 9" in last


# --- what held ----------------------------------------------------------------------------


def test_a_long_undecodable_last_line_gives_a_one_line_verdict_cut_short(tmp_path: Path) -> None:
    command = """sh -c 'head -c 5000 /dev/zero | tr "\\0" "\\377"; echo; exit 2' {eval}"""
    done = run_cli(tmp_path, command)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("batchrun: error: stopped early: the first attempts of a, b, c")
    assert "\ufffd" * 10 in last
    assert len(last) < 2 * MAX_LINE + 300
    assert states(tmp_path) == {"a": ("pending", 1), "b": ("pending", 1), "c": ("pending", 1), "d": ("pending", 0)}


def test_an_eval_whose_name_is_a_regex_reads_as_one_way_to_fail() -> None:
    names = ["a.b", "x+y", "(z)"]
    endings = [Ending(n, failed=True, exit_code=1, last_line=f"no task '{n}'", duration=0.1) for n in names]
    assert {e.signature() for e in endings} == {(1, "no task '{eval}'")}
    assert Ending("a.b", failed=True, exit_code=1, last_line="no task 'aXb'", duration=0.1).signature()[1] == (
        "no task 'aXb'"
    )


def test_a_failure_just_over_one_second_settles_the_verdict_the_other_way() -> None:
    assert not Ending("a", failed=True, exit_code=2, last_line="", duration=FAST_S).fast_failure
    assert Ending("a", failed=True, exit_code=2, last_line="", duration=FAST_S - 0.001).fast_failure


@pytest.mark.parametrize("seed", range(4))
def test_requeued_retries_keep_their_backoff_and_the_attempt_limit_and_never_overlap(tmp_path: Path, seed: int) -> None:
    """Seeded: each attempt fails fast or completes; with --jobs 1-3 and fail-fast armed, every
    retry starts at least half the backoff after its failure, no eval runs twice at once and none
    gets more than --max-attempts.
    """
    rng = random.Random(seed)
    names = tuple(f"e{i}" for i in range(rng.randint(3, 6)))
    journal = tmp_path / "journal"
    script = tmp_path / "ev.sh"
    failing = {(n, k) for n in names for k in (1, 2, 3) if rng.random() < 0.6}
    cases = " ".join(f"{n}:{k}" for n, k in sorted(failing))
    script.write_text(
        f'echo "start $1 $2 $(date +%s.%N)" >> {journal}\n'
        f'case " {cases} " in *" $1:$2 "*) code=5;; *) sleep 0.1; code=0;; esac\n'
        f'echo "end $1 $2 $(date +%s.%N)" >> {journal}\n'
        f'echo "attempt $2 of $1 fails{" in $$" if seed % 2 else ""}" >&2\n'
        "exit $code\n"
    )
    backoff = 0.4
    jobs = rng.randint(1, 3)
    runner = runner_for(tmp_path, f"sh {script} {{eval}} {{attempt}}", names, retry_backoff=backoff, jobs=jobs)
    with capture_logs(), contextlib.suppress(StoppedEarlyError):  # a verdict is fair: first attempts alike
        runner.run()
    lines = [line.split() for line in journal.read_text().splitlines()]
    running: dict[str, float] = {}
    ended: dict[str, float] = {}
    counts: dict[str, int] = {}
    for kind, name, _, at in sorted(lines, key=lambda line: float(line[3])):
        if kind == "start":
            assert name not in running, f"{name} ran twice at once"
            if name in ended:
                assert float(at) - ended[name] >= backoff / 2 - 0.05, f"{name} retried before its backoff"
            running[name] = float(at)
            counts[name] = counts.get(name, 0) + 1
        else:
            del running[name]
            ended[name] = float(at)
    assert max(counts.values()) <= 3
