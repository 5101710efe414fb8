"""Fail-fast: a command broken for every eval stops the run after three quick first attempts, instead
of retrying every eval with backoff; anything else (a completion, other failures, slow ones, few
evals, --no-fail-fast) runs as before. Also: a failed first attempt's retry waits in the queue
while other evals' first attempts run, and an eval's `completed` line comes before the next
eval's `started` line.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import batchrun, open_store, run_with_json_logs, slow_event_writes
from hypothesis import given
from hypothesis import strategies as st

from batchrun import CommandTemplate, EvalSet, RunPlan
from batchrun._failfast import FAST_S, PROBES, Ending, FailFast

SET = "abcdef"


def run(tmp_path: Path, command: str, *flags: str) -> tuple[int, str, dict[str, int]]:
    """Run the six-eval set with *command*; exit code, stderr, and each eval's recorded attempts."""
    (tmp_path / "s.txt").write_text("".join(f"{name}\n" for name in SET))
    progress = f"{tmp_path}/p/"
    done = batchrun("run", "m", "s.txt", "--progress", progress, "--command", command, *flags, cwd=tmp_path)
    status = batchrun("status", "m", "s.txt", "--progress", progress, "--json", cwd=tmp_path)
    attempts = {e["name"]: e["attempts"] for e in json.loads(status.stdout)["evals"]}
    return done.returncode, done.stderr, attempts


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_a_command_broken_for_every_eval_stops_after_three_first_attempts(tmp_path: Path) -> None:
    code, stderr, attempts = run(tmp_path, "sh -c 'echo no such eval: $0 >&2; exit 2' {eval}")
    assert code == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("batchrun: error: stopped early: the first attempts of a, b, c all failed within 1 s")
    assert "exit 2, last line 'no such eval: {eval}'" in last
    assert "--no-fail-fast" in last
    # Each of the first three evals ran once (their retries did not wait out a backoff first) and
    # nothing else ran; nothing is recorded as failed for good.
    assert attempts == {"a": 1, "b": 1, "c": 1, "d": 0, "e": 0, "f": 0}
    stopped = [e for e in events(stderr) if e["event"] == "run.stopped_early"]
    assert [(e["evals"], e["exit_code"], e["last_line"]) for e in stopped] == [(["a", "b", "c"], 2, "no such eval: a")]
    assert not [e for e in events(stderr) if e["event"] == "eval.retry_scheduled" and e["eval"] == "c"]
    stopping = [e for e in events(stderr) if e["event"] == "run.stopping"]
    assert [(e.get("reason"), e.get("signal")) for e in stopping] == [("fail-fast", None)]  # no signal came
    summary = next(e for e in events(stderr) if e["event"] == "run.summary")
    assert summary["failed"] == 0
    assert summary["pending"] == len(SET)


def test_parallel_first_attempts_failing_alike_stop_the_run_too(tmp_path: Path) -> None:
    code, stderr, attempts = run(tmp_path, "sh -c 'exit 7' {eval}", "--jobs", "3")
    assert code == 1
    assert "stopped early" in stderr
    assert "(exit 7, no output)" in stderr
    assert sum(attempts.values()) <= len(SET)  # no retry was spent
    assert sum(1 for n in attempts.values() if n) >= PROBES


def test_no_fail_fast_retries_every_eval(tmp_path: Path) -> None:
    code, stderr, attempts = run(
        tmp_path, "sh -c 'exit 2' {eval}", "--no-fail-fast", "--max-attempts", "2", "--retry-backoff", "0.05"
    )
    assert code == 1
    assert "stopped early" not in stderr
    assert attempts == dict.fromkeys(SET, 2)


def test_an_eval_that_completes_first_keeps_the_run_going(tmp_path: Path) -> None:
    code, stderr, attempts = run(tmp_path, "sh -c 'test $0 = a' {eval}", "--max-attempts", "1")
    assert code == 1
    assert "stopped early" not in stderr
    assert attempts == dict.fromkeys(SET, 1)


def test_first_attempts_failing_in_different_ways_keep_the_run_going(tmp_path: Path) -> None:
    code, stderr, attempts = run(tmp_path, "sh -c 'echo pid $$; exit 2' {eval}", "--max-attempts", "1")
    assert code == 1
    assert "stopped early" not in stderr
    assert attempts == dict.fromkeys(SET, 1)


def test_a_retry_waits_in_the_queue_while_other_evals_first_attempts_run(tmp_path: Path) -> None:
    """Eval a fails its first attempt quickly, then completes; the others complete at once. Its
    retry comes after the other evals, once its backoff is over, and the run ends well.
    """
    script = tmp_path / "once.sh"
    script.write_text('[ "$1" != a ] || [ -e "$0.failed" ] || { touch "$0.failed"; exit 3; }\n')
    command = f"sh {script} {{eval}}"
    code, stderr, attempts = run(tmp_path, command, "--retry-backoff", "0.5")
    assert code == 0, stderr
    assert attempts == {"a": 2, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1}
    started = [(e["eval"], e["attempt"]) for e in events(stderr) if e["event"] == "eval.started"]
    assert started[:2] == [("a", 1), ("b", 1)]
    assert started.index(("a", 2)) > started.index(("b", 1))


def test_each_completed_line_comes_before_the_next_started_line(tmp_path: Path) -> None:
    code, stderr, _ = run(tmp_path, "true {eval}")
    assert code == 0, stderr
    order = [(e["event"], e["eval"]) for e in events(stderr) if e["event"] in {"eval.started", "eval.completed"}]
    assert order == [(kind, name) for name in SET for kind in ("eval.started", "eval.completed")]


endings = st.builds(
    Ending,
    eval=st.sampled_from(list(SET)),
    failed=st.booleans(),
    exit_code=st.sampled_from([0, 1, 2, None]),
    last_line=st.sampled_from(["", "boom", "no such eval: a", "no such eval: b"]),
    duration=st.sampled_from([0.0, 0.5, FAST_S, 30.0]),
)


@given(st.lists(endings, max_size=8), st.integers(min_value=0, max_value=8), st.booleans())
def test_the_verdict_is_exactly_three_fast_first_failures_alike(
    seq: list[Ending], evals_to_run: int, enabled: bool
) -> None:
    watch = FailFast(enabled=enabled)
    watch.expect(evals_to_run)
    verdicts = []
    probes: list[Ending] = []
    for ending in seq:
        probe = watch.is_probe(ending.eval)
        if probe:
            probes.append(ending)
        verdicts.append(watch.ended(ending, probe=probe))
    first = probes[:PROBES]
    expected = (
        enabled
        and evals_to_run >= PROBES
        and len(first) == PROBES
        and all(e.failed and e.duration < FAST_S for e in first)
        and len({e.signature() for e in first}) == 1
    )
    assert [v for v in verdicts if v is not None] == ([watch.verdict] if expected else [])
    assert (watch.verdict is not None) == expected


def test_an_evals_output_comes_after_its_started_line_on_a_slow_store(tmp_path: Path) -> None:
    """`eval.started` is logged once the start is durable (after the previous eval's `completed`);
    the eval's first output line waits for it, here 0.3 s, instead of coming first.
    """
    store = open_store(str(tmp_path / "p.txt"))
    slow_event_writes(store, 0.3)
    plan = RunPlan("m", EvalSet("s", ("a", "b"), "test"), CommandTemplate.parse("sh -c 'echo out-$0 >&2' {eval}"))
    summary, lines = run_with_json_logs(plan, store)
    assert summary.exit_code == 0
    seen = [
        json.loads(line)["event"] + " " + json.loads(line).get("eval", "") if line.startswith("{") else line
        for line in lines
    ]
    order = [line for line in seen if line.startswith(("eval.started", "eval.completed", "out-"))]
    assert order == ["eval.started a", "out-a", "eval.completed a", "eval.started b", "out-b", "eval.completed b"]
