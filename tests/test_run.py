"""`batchrun run`, `status` and `reset` as a user runs them, with progress on the local disk."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import batchrun, fake_command, journal_entries


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "set.yaml").write_text("myset:\n  evals: [alpha, beta, gamma, alpha]\n")
    return tmp_path


def env_for(workdir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "BATCHRUN_PROGRESS": str(workdir / "progress") + "/", **extra}


def starts(journal: Path) -> Counter[str]:
    return Counter(e[1] for e in journal_entries(journal) if e[0] == "start")


def progress_lines(workdir: Path, model: str = "m", eval_set: str = "myset") -> list[str]:
    return (workdir / "progress" / f"{model}.{eval_set}.progress.txt").read_text().splitlines()


def test_run_completes_every_eval_once_and_a_rerun_skips_them(workdir: Path) -> None:
    """All evals run once (duplicates dropped); the same command again runs nothing and exits 0."""
    journal = workdir / "journal"
    env = env_for(workdir)
    first = batchrun("run", "m", "set.yaml", "--command", fake_command(journal), env=env, cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert starts(journal) == Counter({"alpha": 1, "beta": 1, "gamma": 1})
    assert progress_lines(workdir) == ["alpha", "beta", "gamma"]
    second = batchrun("run", "m", "set.yaml", "--command", fake_command(journal), env=env, cwd=workdir)
    assert second.returncode == 0, second.stderr
    assert starts(journal) == Counter({"alpha": 1, "beta": 1, "gamma": 1})
    status = batchrun("status", "m", "set.yaml", "--json", env=env, cwd=workdir)
    report = json.loads(status.stdout)
    assert (report["total"], report["done"], report["failed"], report["pending"]) == (3, 3, 0, 0)


def test_failed_eval_exits_1_is_not_recorded_and_is_left_alone(workdir: Path) -> None:
    """An eval out of attempts makes the run exit 1, stays out of the progress file, and is not rerun."""
    journal = workdir / "journal"
    env = env_for(workdir)
    command = fake_command(journal, "--fail", "beta")
    args = ["run", "m", "set.yaml", "--command", command, "--max-attempts", "1"]
    result = batchrun(*args, env=env, cwd=workdir)
    assert result.returncode == 1
    assert progress_lines(workdir) == ["alpha", "gamma"]
    report = json.loads(batchrun("status", "m", "set.yaml", "--json", env=env, cwd=workdir).stdout)
    beta = next(e for e in report["evals"] if e["name"] == "beta")
    assert (beta["state"], beta["attempts"], beta["exit_code"], beta["reason"]) == ("failed", 1, 3, "exit")
    assert sorted(beta["last_output"]) == ["fake eval beta attempt 1 env=beta", "to stderr: beta"]
    assert batchrun(*args, env=env, cwd=workdir).returncode == 1
    assert starts(journal) == Counter({"alpha": 1, "beta": 1, "gamma": 1})


def test_eval_gets_its_environment_and_runs_without_a_shell(tmp_path: Path) -> None:
    """The eval sees BATCHRUN_* variables; placeholders and extra args fill argv; names can't inject."""
    (tmp_path / "s.txt").write_text("# a comment\nx;touch pwned  # trailing comment\n")
    names = "'BATCHRUN_MODEL','BATCHRUN_EVAL_SET','BATCHRUN_EVAL','BATCHRUN_ATTEMPT','BATCHRUN_PROGRESS'"
    script = f"import os,sys; print(sys.argv[1:], [os.environ[k] for k in ({names})])"
    command = f'{sys.executable} -c "{script}" {{model}} {{eval}} {{eval_set}} {{attempt}}'
    progress = tmp_path / "p.txt"
    result = batchrun(
        "run", "gpt", "s.txt", "--command", command, "--progress", str(progress), "--", "--max", "5", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    argv = ["gpt", "x;touch pwned", "s", "1", "--max", "5"]
    environ = ["gpt", "s", "x;touch pwned", "1", str(progress)]
    assert result.stdout.strip() == f"{argv} {environ}"
    assert not (tmp_path / "pwned").exists()


def test_jobs_run_evals_at_once_with_prefixed_output(workdir: Path) -> None:
    """With --jobs 3 the three evals overlap and every output line carries its eval's name."""
    journal = workdir / "journal"
    result = batchrun(
        "run",
        "m",
        "set.yaml",
        "--jobs",
        "3",
        "--command",
        fake_command(journal, "--sleep", "1"),
        env=env_for(workdir),
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    kinds = [e[0] for e in journal_entries(journal)]
    assert kinds[:3] == ["start", "start", "start"]
    assert sorted(result.stdout.splitlines()) == [
        "[alpha] fake eval alpha attempt 1 env=alpha",
        "[beta] fake eval beta attempt 1 env=beta",
        "[gamma] fake eval gamma attempt 1 env=gamma",
    ]
    assert "[beta] to stderr: beta" in result.stderr


def test_options_come_from_environment_variables(workdir: Path) -> None:
    """BATCHRUN_COMMAND, BATCHRUN_JOBS and BATCHRUN_PROGRESS work like the options."""
    journal = workdir / "journal"
    env = env_for(
        workdir,
        BATCHRUN_COMMAND=fake_command(journal),
        BATCHRUN_JOBS="2",
        BATCHRUN_PROGRESS=str(workdir / "elsewhere" / "{model}-{eval_set}.txt"),
    )
    result = batchrun("run", "m", "set.yaml", env=env, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert sorted((workdir / "elsewhere" / "m-myset.txt").read_text().split()) == ["alpha", "beta", "gamma"]
    assert '"jobs": 2' in result.stderr


def test_fresh_forgets_earlier_progress(workdir: Path) -> None:
    """--fresh reruns evals that were done, and may change the command."""
    journal = workdir / "journal"
    env = env_for(workdir)
    assert batchrun("run", "m", "set.yaml", "--command", fake_command(journal), env=env, cwd=workdir).returncode == 0
    other = fake_command(journal, "--sleep", "0")
    result = batchrun("run", "m", "set.yaml", "--fresh", "--command", other, env=env, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert starts(journal) == Counter({"alpha": 2, "beta": 2, "gamma": 2})


def test_oaievalset_progress_file_is_picked_up(tmp_path: Path) -> None:
    """Pointed at oaievalset's progress file, batchrun runs only the evals it lacks: lines of this
    model with the same extra args are completions; another model's or other extra args' are not.
    """
    (tmp_path / "set.yaml").write_text("s: {evals: [a, b, c, d]}\n")
    progress = tmp_path / "oaievalset" / "m.s.progress.txt"
    progress.parent.mkdir()
    progress.write_text(
        '["oaieval", "m", "a"]\n["oaieval", "m", "c", "--registry_path", "x"]\n["oaieval", "other", "d"]\n'
    )
    journal = tmp_path / "journal"
    result = batchrun(
        "run", "m", "set.yaml", "--progress", str(progress), "--command", fake_command(journal), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert starts(journal) == Counter({"b": 1, "c": 1, "d": 1})
    assert progress.read_text().splitlines() == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "content",
    [
        "notes: buy milk\nb\n",  # a line that names an eval of the set
        "s:\n  evals: [a, b]\n",  # the eval-set YAML given as --progress by mistake
        "b\n",  # plain names with no sidecar: not recognisably anyone's progress
        '["oaieval", "m", "a"]\nplain\n',
    ],
)
def test_a_file_that_is_not_a_progress_file_is_refused_and_untouched(tmp_path: Path, content: str) -> None:
    """--progress naming a file that is neither batchrun's nor oaievalset's: exit 2, one line,
    nothing imported, run, rewritten or deleted (--fresh and reset included).
    """
    (tmp_path / "set.yaml").write_text("s: {evals: [a, b]}\n")
    notes = tmp_path / "notes.txt"
    notes.write_text(content)
    journal = tmp_path / "journal"
    for extra in ([], ["--fresh"]):
        result = batchrun(
            "run", "m", "set.yaml", "--progress", str(notes), "--command", fake_command(journal), *extra, cwd=tmp_path
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1
        assert "is not a progress file" in result.stderr
    reset = batchrun("reset", "--progress", str(notes), "--yes", cwd=tmp_path)
    assert reset.returncode == 2, reset.stderr
    assert notes.read_text() == content
    assert not journal.exists()
    assert not (tmp_path / "notes.txt.d").exists()


def test_status_from_the_progress_uri_alone(workdir: Path) -> None:
    """`status --progress URI` takes model, set and evals from the stored run identity."""
    journal = workdir / "journal"
    env = env_for(workdir)
    command = fake_command(journal, "--fail", "gamma")
    batchrun(
        "run",
        "m",
        "set.yaml",
        "--command",
        command,
        "--max-attempts",
        "2",
        "--retry-backoff",
        "0",
        env=env,
        cwd=workdir,
    )
    uri = str(workdir / "progress" / "m.myset.progress.txt")
    result = batchrun("status", "--progress", uri, "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("model", "eval_set", "progress", "total", "done", "failed", "pending")} == {
        "model": "m",
        "eval_set": "myset",
        "progress": uri,
        "total": 3,
        "done": 2,
        "failed": 1,
        "pending": 0,
    }
    assert [(e["name"], e["state"], e["attempts"]) for e in report["evals"]] == [
        ("alpha", "done", 1),
        ("beta", "done", 1),
        ("gamma", "failed", 2),
    ]
    table = batchrun("status", "--progress", uri, cwd=workdir).stdout
    assert "gamma" in table
    assert "failed" in table
    assert "total 3: 2 done, 1 failed, 0 pending" in table


def test_reset_with_yes_deletes_the_run(workdir: Path) -> None:
    """`reset --yes` deletes the progress; the next run starts over."""
    journal = workdir / "journal"
    env = env_for(workdir)
    batchrun("run", "m", "set.yaml", "--command", fake_command(journal), env=env, cwd=workdir)
    result = batchrun("reset", "m", "set.yaml", "--yes", env=env, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert not (workdir / "progress" / "m.myset.progress.txt").exists()
    assert not (workdir / "progress" / "m.myset.progress.txt.d").exists()
    assert "nothing stored" in batchrun("reset", "m", "set.yaml", "--yes", env=env, cwd=workdir).stdout


def test_logs_are_json_events_with_flat_fields(workdir: Path) -> None:
    """Off a terminal, stderr carries one JSON object per event with the documented names and fields."""
    journal = workdir / "journal"
    env = env_for(workdir, OPENAI_API_KEY="sk-secret-value")
    result = batchrun(
        "run",
        "m",
        "set.yaml",
        "--command",
        fake_command(journal, "--fail", "beta"),
        "--max-attempts",
        "1",
        env=env,
        cwd=workdir,
    )
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names[0] == "run.started"
    assert names[-2:] == ["run.finished", "run.summary"]
    assert {"eval.started", "eval.completed", "eval.failed"} <= set(names)
    completed = next(e for e in events if e["event"] == "eval.completed")
    assert {
        "model",
        "eval_set",
        "eval",
        "attempt",
        "duration_s",
        "exit_code",
        "done",
        "total",
        "worker",
        "progress",
    } <= set(completed)
    failed = next(e for e in events if e["event"] == "eval.failed")
    assert (failed["eval"], failed["exit_code"]) == ("beta", 3)
    assert "sk-secret-value" not in result.stderr


def test_terminal_gets_readable_logs_and_a_progress_bar(workdir: Path) -> None:
    """On a terminal, log lines are not JSON and a done/total bar with an ETA is drawn."""
    journal = workdir / "journal"
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", "m", "set.yaml", "--command", fake_command(journal)],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=env_for(workdir),
        cwd=workdir,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=30) == 0
    text = b"".join(chunks).decode()
    assert "run.started" in text
    assert '{"' not in text
    assert "3/3" in text
    assert "ETA" in text


def test_progress_file_is_updated_while_evals_run(workdir: Path) -> None:
    """The progress file shows completed evals during a run, not only at its end."""
    (workdir / "long.txt").write_text("\n".join(f"e{i}" for i in range(12)) + "\n")
    journal = workdir / "journal"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchrun",
            "run",
            "m",
            "long.txt",
            "--command",
            fake_command(journal, "--sleep", "0.5"),
        ],
        env=env_for(workdir),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    progress = workdir / "progress" / "m.long.progress.txt"
    seen: list[str] = []
    while proc.poll() is None and len(seen) < 3:
        seen = progress.read_text().splitlines() if progress.exists() else []
        time.sleep(0.1)
    still_running = proc.poll() is None
    proc.wait(timeout=60)
    assert still_running, "the run ended before its progress file showed three completions"
    assert seen[:3] == ["e0", "e1", "e2"]
