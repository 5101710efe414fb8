"""Bad input: one table, each case ends with its exit code, a one-line message, nothing written."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from helpers import BUCKET, batchrun, free_port

from batchrun import errors


@dataclass
class Case:
    files: dict[str, str]
    args: list[str]
    code: int
    message: str
    before: list[str] | None = None  # a run that must succeed first (its progress must survive)
    store: str = "local"  # where progress lives: local, s3 (moto), denying (moto checking keys), unreachable


GOOD = "good.yaml"
GOOD_SET = "good:\n  evals: [a, b]\n"


STATE = ["run", "m", GOOD, "--state"]

CASES: dict[str, Case] = {
    "stray word taken for an extra argument": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "true"], 2, r"unexpected argument 'true'.*go after --"
    ),
    "value given to a flag": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--fresh", "true", "--", "x"], 2, r"unexpected argument 'true'"
    ),
    "stop signal of an unknown name": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--stop-signal", "SIGFOO"], 2, r"give one of TERM, INT, HUP, QUIT"
    ),
    "unknown log format": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--log-format", "yaml"], 2, r"give one of auto, json, console"
    ),
    "interpreter's script missing": Case(
        {GOOD: GOOD_SET},
        ["run", "m", GOOD, "--command", "python3 evals/my_eval.py {model} {eval}"],
        2,
        r"python3 would run 'evals/my_eval.py', which does not exist",
    ),
    "script missing for one eval": Case(
        {GOOD: GOOD_SET, "evals/a.sh": "exit 0\n"},
        ["run", "m", GOOD, "--command", "bash evals/{eval}.sh"],
        2,
        r"bash would run 'evals/b.sh', which does not exist",
    ),
    "state sync of zero": Case({GOOD: GOOD_SET}, [*STATE, "--state-sync", "0"], 2, r"--state-sync must be .* at least"),
    "state sync not a number": Case({GOOD: GOOD_SET}, [*STATE, "--state-sync", "nan"], 2, r"--state-sync must be"),
    "negative final sync timeout": Case(
        {GOOD: GOOD_SET}, [*STATE, "--final-sync-timeout", "-1"], 2, r"--final-sync-timeout must be"
    ),
    "blank state root": Case({GOOD: GOOD_SET}, [*STATE, "--state-root", " "], 2, r"--state-root is empty"),
    "state root is a file": Case(
        {GOOD: GOOD_SET, "afile": "x"},
        [*STATE, "--state-root", "afile/sub"],
        2,
        r"cannot use .*afile/sub as the state root",
    ),
    "pull with no results stored": Case(
        {GOOD: GOOD_SET},
        ["pull", "m", GOOD, "--to", "out"],
        2,
        r"no results stored for any eval",
        before=["run", "m", GOOD],
    ),
    "pull of an eval with no results": Case(
        {GOOD: GOOD_SET},
        ["pull", "m", GOOD, "zz", "--to", "out"],
        2,
        r"no results stored for eval 'zz'",
        before=["run", "m", GOOD],
    ),
    "report as json and csv": Case(
        {GOOD: GOOD_SET}, ["report", "m", GOOD, "--json", "--csv"], 2, r"give --json or --csv, not both"
    ),
    "report on an empty store": Case({}, ["report", "m", "x", "--progress", "PROGRESS"], 2, r"no batchrun progress at"),
    "missing eval-set file": Case({}, ["run", "m", "nope.yaml"], 2, r"eval-set file not found: nope\.yaml"),
    "unreadable eval-set file": Case({"dir.yaml/x": ""}, ["run", "m", "dir.yaml"], 2, r"cannot read eval-set file"),
    "malformed YAML": Case(
        {"bad.yaml": "s:\n  evals: [a, b\n"}, ["run", "m", "bad.yaml"], 2, r"malformed YAML in .*bad\.yaml line \d"
    ),
    "set not in file": Case({GOOD: GOOD_SET}, ["run", "m", "good.yaml#other"], 2, r"eval set 'other' not found in"),
    "set name not found": Case({}, ["run", "m", "no-such-set"], 2, r"eval set 'no-such-set' not found"),
    "several sets, none chosen": Case(
        {"two.yaml": "a: {evals: [x]}\nb: {evals: [y]}\n"}, ["run", "m", "two.yaml"], 2, r"several sets \(a, b\)"
    ),
    "empty set": Case({"empty.yaml": "s:\n  evals: []\n"}, ["run", "m", "empty.yaml"], 2, r"eval set 's' is empty"),
    "empty text file": Case({"empty.txt": "# only a comment\n"}, ["run", "m", "empty.txt"], 2, r"is empty"),
    "empty eval name": Case(
        {"e.yaml": "s:\n  evals: [a, '']\n"}, ["run", "m", "e.yaml"], 2, r"eval #2: eval name is empty"
    ),
    "newline in eval name": Case(
        {"n.yaml": 's:\n  evals: ["a\\nb"]\n'}, ["run", "m", "n.yaml"], 2, r"newline or control character"
    ),
    "control character in eval name": Case(
        {"c.yaml": 's:\n  evals: ["a\\tb"]\n'}, ["run", "m", "c.yaml"], 2, r"control character"
    ),
    "eval name not a string": Case(
        {"i.yaml": "s:\n  evals: [[1, 2]]\n"}, ["run", "m", "i.yaml"], 2, r"must be a string"
    ),
    "malformed progress URI": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--progress", "s3://bucket-only"], 2, r"needs a bucket and a key"
    ),
    "unknown protocol": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--progress", "nosuch://b/k"], 2, r"unknown protocol 'nosuch'"
    ),
    "unknown placeholder in progress URI": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--progress", "/tmp/{user}.txt"], 2, r"only \{model\} and \{eval_set\}"
    ),
    "bad storage options JSON": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--storage-options", "{nope"], 2, r"--storage-options is not valid JSON"
    ),
    "storage options not an object": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--storage-options", "[1]"], 2, r"must be a JSON object"
    ),
    "unknown placeholder in command": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--command", "x {evl}"], 2, r"unknown placeholder \{evl\}"
    ),
    "unbalanced quote in command": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--command", "x 'a"], 2, r"No closing quotation"
    ),
    "format spec that fits no value": Case(
        {GOOD: GOOD_SET},
        ["run", "m", GOOD, "--command", "x {model:d}"],
        2,
        r"Unknown format code 'd' .* '\{model:d\}'",
    ),
    "unknown conversion": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--command", "x {eval!x}"], 2, r"unknown conversion !x in '\{eval!x\}'"
    ),
    "placeholder inside a format spec": Case(
        {GOOD: GOOD_SET},
        ["run", "m", GOOD, "--command", "x {model:{eval}}"],
        2,
        r"spec '\{eval\}' .* not allowed",
    ),
    "eval name that is an option": Case(
        {"o.yaml": "s:\n  evals: [a, '--record_path=/etc/cron.d/x']\n"},
        ["run", "m", "o.yaml"],
        2,
        r"eval '--record_path=/etc/cron.d/x' starts with '-' .* put \{eval\} after a -- word",
    ),
    "eval name that is a short option": Case(
        {"h.yaml": "s:\n  evals: ['-h']\n"},
        ["run", "m", "h.yaml", "--command", "true --flag={eval} {eval}"],
        2,
        r"eval '-h' starts with '-'",
    ),
    "program not found": Case(
        {GOOD: GOOD_SET},
        ["run", "m", GOOD, "--command", "no-such-program-xyz {eval}"],
        2,
        r"program 'no-such-program-xyz' not found",
    ),
    "jobs 0": Case({GOOD: GOOD_SET}, ["run", "m", GOOD, "--jobs", "0"], 2, r"--jobs must be at least 1, got 0"),
    "max attempts 0": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--max-attempts", "0"], 2, r"--max-attempts must be at least 1"
    ),
    "negative grace": Case({GOOD: GOOD_SET}, ["run", "m", GOOD, "--grace", "-1"], 2, r"--grace can't be negative"),
    "negative backoff": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--retry-backoff", "-1"], 2, r"--retry-backoff can't be negative"
    ),
    "zero timeout": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--eval-timeout", "0"], 2, r"--eval-timeout must be positive"
    ),
    "timeout nan": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--eval-timeout", "nan"], 2, r"--eval-timeout must be a finite number"
    ),
    "timeout inf": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--eval-timeout", "inf"], 2, r"--eval-timeout must be a finite number"
    ),
    "grace nan": Case({GOOD: GOOD_SET}, ["run", "m", GOOD, "--grace", "nan"], 2, r"--grace must be a finite number"),
    "backoff inf": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--retry-backoff", "inf"], 2, r"--retry-backoff must be a finite number"
    ),
    "progress names a directory": Case(
        {GOOD: GOOD_SET, "progress/earlier/keep.txt": "kept"},
        ["run", "m", GOOD, "--progress", "progress/earlier"],
        2,
        r"progress path .*/progress/earlier is a directory; end it with / to put the progress file inside",
    ),
    "unknown stop signal": Case(
        {GOOD: GOOD_SET},
        ["run", "m", GOOD, "--stop-signal", "KILL"],
        2,
        r"'KILL' is not a signal batchrun sends; give one of TERM, INT",
    ),
    "jobs not a number": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--jobs", "many"], 2, r"invalid value for --jobs / -j: "
    ),
    "missing argument": Case({}, ["run", "m"], 2, r"Missing argument 'EVAL_SET'"),
    "unknown option": Case({GOOD: GOOD_SET}, ["run", "m", GOOD, "--bogus"], 2, r"No such option: --bogus"),
    "unknown command": Case({}, ["runn"], 2, r"No such command 'runn'"),
    "run identity differs": Case(
        {GOOD: GOOD_SET},
        ["run", "m", GOOD, "--command", "touch other {eval}"],
        2,
        r"belongs to another run \(command was .*\); use --fresh to start over or --progress",
        before=["run", "m", GOOD],
    ),
    "missing bucket": Case(
        {GOOD: GOOD_SET},
        ["run", "m", GOOD, "--progress", "s3://no-such-bucket/p.txt"],
        3,
        r"bucket 'no-such-bucket' does not exist or is not writable \(s3://no-such-bucket/p\.txt\.d/run\.json\)$",
        store="s3",
    ),
    "denied access": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD], 3, r"access denied to s3://batchrun-test/.*run\.json", store="denying"
    ),
    "unreachable store": Case(
        {GOOD: GOOD_SET},
        ["run", "m", GOOD],
        3,
        r"progress store: cannot read s3://batchrun-test/.*run\.json: EndpointConnectionError",
        store="unreachable",
    ),
    "empty --worker-id": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--worker-id", ""], 2, r"--worker-id can't be empty"
    ),
    "long --worker-id": Case({GOOD: GOOD_SET}, ["run", "m", GOOD, "--worker-id", "w" * 101], 2, r"101 characters"),
    "slash in --worker-id": Case({GOOD: GOOD_SET}, ["run", "m", GOOD, "--worker-id", "a/b"], 2, r"contains '/'"),
    "control character in --worker-id": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--worker-id", "a\tb"], 2, r"control character"
    ),
    "--heartbeat 0": Case(
        {GOOD: GOOD_SET}, ["run", "m", GOOD, "--heartbeat", "0"], 2, r"--heartbeat must be at least 0\.1 s"
    ),
    "--worker-timeout too short": Case(
        {GOOD: GOOD_SET},
        ["run", "m", GOOD, "--heartbeat", "10", "--worker-timeout", "20"],
        2,
        r"--worker-timeout must be more than twice --heartbeat \(20 s\), got 20",
    ),
    "status of nothing": Case({}, ["status", "--progress", "PROGRESS"], 2, r"no batchrun progress at"),
    "reset without --yes off a terminal": Case(
        {GOOD: GOOD_SET}, ["reset", "m", GOOD], 2, r"refusing to delete .* without --yes", before=["run", "m", GOOD]
    ),
}


def snapshot_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def bucket_listing(url: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=url)
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


@pytest.fixture
def denying_s3() -> Iterator[str]:
    """A moto server that checks credentials, and so denies the dummy ones."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


def case_env(case: Case, request: pytest.FixtureRequest, progress: Path, marker: Path) -> dict[str, str]:
    env = {**os.environ, "BATCHRUN_PROGRESS": f"{progress}/", "BATCHRUN_COMMAND": f"touch {marker} {{eval}}"}
    if case.store == "s3":
        env.update(request.getfixturevalue("s3_env"))
    elif case.store in ("denying", "unreachable"):
        url = request.getfixturevalue("denying_s3") if case.store == "denying" else f"http://127.0.0.1:{free_port()}"
        env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="bad", AWS_SECRET_ACCESS_KEY="bad")  # noqa: S106
    if case.store != "local":
        env["BATCHRUN_PROGRESS"] = f"s3://{BUCKET}/runs/"
    return env


def is_retry_event(line: str, case: Case) -> bool:
    """A store that fails is retried, one logged round at a time, before its one error line (exit 3)."""
    if case.code != errors.EXIT_STORE or not line.startswith("{"):
        return False
    return bool(json.loads(line).get("event") == "store.retrying")


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_fails_cleanly_and_writes_nothing(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Bad input exits with its documented code and one line on stderr, running and writing nothing."""
    for name, text in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    progress = tmp_path / "progress"
    marker = tmp_path / "an-eval-ran"
    env = case_env(case, request, progress, marker)
    if case.before:
        assert batchrun(*case.before, env=env, cwd=tmp_path).returncode == 0
        marker.unlink()
    before = snapshot_tree(progress) if progress.exists() else {}
    objects_before = bucket_listing(env["AWS_ENDPOINT_URL"]) if case.store == "s3" else []

    args = [a.replace("PROGRESS", str(progress / "x.progress.txt")) for a in case.args]
    result = batchrun(*args, env=env, cwd=tmp_path, timeout=120)

    assert result.returncode == case.code, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not is_retry_event(line, case)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("batchrun: error: ")
    assert re.search(case.message, lines[0]), lines[0]
    assert not marker.exists()
    assert (snapshot_tree(progress) if progress.exists() else {}) == before
    if case.store == "s3":
        assert bucket_listing(env["AWS_ENDPOINT_URL"]) == objects_before


# A bug planted at start-up: the function that loads the eval set (run) or finds the store (status) raises.
INJECTED_BUG = """
import batchrun._store_cli
import batchrun.cli

def _bug(*args, **kwargs):
    raise RuntimeError("injected bug\\nsecond line")

batchrun.cli.load_eval_set = batchrun._store_cli.locate_run = _bug
"""


@pytest.mark.parametrize("args", [["run", "m", GOOD], ["status", "m", GOOD]], ids=["run", "status"])
def test_internal_error_exits_70_with_one_line_and_the_traceback_in_the_log(args: list[str], tmp_path: Path) -> None:
    """An exception that is no BatchrunError exits 70 (not 1, which fails the Job) with one error line
    and the traceback inside one JSON `run.crashed` event, writing nothing.
    """
    (tmp_path / GOOD).write_text(GOOD_SET)
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(INJECTED_BUG)
    progress = tmp_path / "progress"
    path = os.pathsep.join(filter(None, [str(tmp_path / "hook"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "BATCHRUN_PROGRESS": f"{progress}/"}
    result = batchrun(*args, env=env, cwd=tmp_path)

    assert result.returncode == errors.EXIT_INTERNAL == 70, result.stderr
    *logged, last = result.stderr.strip().splitlines()
    assert last == "batchrun: error: internal error: RuntimeError: injected bug (please report)"
    events = [json.loads(line) for line in logged]  # every other line is a JSON log event
    (crash,) = [e for e in events if e["event"] == "run.crashed"]
    assert crash["level"] == "error"
    assert crash["error"] == "RuntimeError: injected bug"
    assert crash["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: injected bug\nsecond line" in crash["exception"]
    assert not progress.exists()
