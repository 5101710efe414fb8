"""Workers' heartbeats, liveness and fencing (batchrun/fleet.py, batchrun/_liveness.py), on real stores: who holds an
attempt, when a stalled worker is declared dead, how an id is taken over, and what the fenced
process learns.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import open_store

from batchrun.errors import BadInputError, FencedError
from batchrun.fleet import Fleet, Heartbeat, check_timing, check_worker_id, default_worker_id
from batchrun.progress import ProgressStore

HEARTBEAT = 0.2
TIMEOUT = 1.0


def member(store: ProgressStore, worker: str, *, heartbeat: float = HEARTBEAT, timeout: float = TIMEOUT) -> Fleet:
    fleet = store.fleet(worker, heartbeat, timeout)
    fleet.join(grace=0.5)
    return fleet


def wait_until_dead(a: Fleet, b: Fleet) -> float:
    """Until *b* no longer sees *a* (stalled: it never beats) hold its attempts; the seconds that took."""
    b.observe(force=True)
    started = time.monotonic()
    while b.holds(a.worker, a.writer):
        time.sleep(0.05)
        assert time.monotonic() - started < 10 * TIMEOUT
    return time.monotonic() - started


def test_a_beating_worker_holds_its_attempts(progress_uri: str) -> None:
    """While a worker beats, others see its attempts as held, however long it runs."""
    a = member(open_store(progress_uri), "a")
    b = member(open_store(progress_uri), "b")
    b.observe(force=True)
    deadline = time.monotonic() + 2 * TIMEOUT
    while time.monotonic() < deadline:
        a.beat()
        assert b.holds("a", a.writer)
        time.sleep(HEARTBEAT)


def test_a_stalled_worker_is_declared_dead_after_the_timeout_and_learns_it_at_its_next_beat(
    progress_uri: str,
) -> None:
    """A worker whose heartbeat stops changing is dead to another only after --worker-timeout on
    the other's clock; the stalled one is then fenced and told who declared it dead.
    """
    a = member(open_store(progress_uri), "a")
    b = member(open_store(progress_uri), "b")
    waited = wait_until_dead(a, b)
    assert waited >= TIMEOUT - HEARTBEAT  # not before the timeout (listing granularity)
    stored = {w.worker: w for w in open_store(progress_uri).workers()}
    assert stored["a"].state == "dead"
    with pytest.raises(FencedError, match=r"declared dead .*worker 'b'"):
        a.beat()
    with pytest.raises(FencedError):
        a.confirm()  # and every write after that is refused


def test_a_worker_declared_dead_stays_dead_at_the_next_listing(progress_uri: str) -> None:
    """The declaration's own write is not taken for a sign of life: the next listing sees the dead
    heartbeat at once (it took two heartbeats, before a worker took the dead one's other evals).
    """
    a = member(open_store(progress_uri), "a")
    b = member(open_store(progress_uri), "b")
    wait_until_dead(a, b)
    b.observe(force=True)
    assert not b.holds("a", a.writer)
    assert b.others_live() == 0


def test_a_worker_that_beats_again_in_time_is_not_declared_dead(progress_uri: str) -> None:
    """The declaration is a conditional write on what was observed: a beat in between wins."""
    a = member(open_store(progress_uri), "a", timeout=0.6)
    b = member(open_store(progress_uri), "b", timeout=0.6)
    b.observe(force=True)
    time.sleep(0.7)
    a.beat()  # b has not listed since: what it observed is stale
    assert b.holds("a", a.writer)
    a.beat()


def test_a_new_process_with_the_same_id_takes_over_at_once_and_fences_the_old_one(tmp_path: Path) -> None:
    """Taking an id over needs no timeout; the old holder's next beat says who superseded it; its
    attempts stay held (by the new holder's view) for a heartbeat plus the grace, then are free.
    """
    progress_uri = str(tmp_path / "p.txt")
    old = member(open_store(progress_uri), "w")
    new = member(open_store(progress_uri), "w")
    assert new.predecessor is not None
    assert new.predecessor.writer == old.writer
    with pytest.raises(FencedError, match=f"taken over by process {new.writer} on host"):
        old.beat()
    assert new.holds("w", old.writer)  # it may still be stopping its evals
    time.sleep(HEARTBEAT + 0.5 + 5.2)
    assert not new.holds("w", old.writer)
    assert new.holds("w", new.writer)
    other = member(open_store(progress_uri), "x")
    other.observe(force=True)
    assert other.holds("w", new.writer)


def test_a_dead_process_on_this_host_is_known_dead_at_once(tmp_path: Path) -> None:
    """A heartbeat left by a process of this machine that no longer exists (a laptop run killed
    with SIGKILL) does not hold its evals for --worker-timeout.
    """
    uri = str(tmp_path / "p.txt")
    code = (
        "import sys; sys.path[:0] = sys.argv[2:]\n"
        "from helpers import open_store\n"
        "f = open_store(sys.argv[1]).fleet('gone', 10.0, 60.0); f.join(grace=1.0); print(f.writer)\n"
    )
    writer = subprocess.run(
        [sys.executable, "-c", code, uri, str(Path(__file__).parent), *sys.path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    b = open_store(uri).fleet("b", 10.0, 60.0)
    b.join(grace=1.0)
    b.observe(force=True)
    assert not b.holds("gone", writer)
    assert {w.worker: w.state for w in open_store(uri).workers()}["gone"] == "dead"


def test_an_orderly_leave_removes_the_heartbeat(progress_uri: str) -> None:
    """After leave() nobody waits for the worker: it is gone from the listing at once."""
    a = member(open_store(progress_uri), "a")
    b = member(open_store(progress_uri), "b")
    b.observe(force=True)
    assert b.holds("a", a.writer)
    a.leave()
    b.observe(force=True)
    assert not b.holds("a", a.writer)
    assert [w.worker for w in open_store(progress_uri).workers()] == ["b"]


def test_a_worker_that_joined_after_the_last_listing_is_not_taken_for_gone(tmp_path: Path) -> None:
    """Missing from an old listing is not proof of absence: the worker is looked for again."""
    uri = str(tmp_path / "p.txt")
    b = member(open_store(uri), "b", heartbeat=10.0, timeout=60.0)
    b.observe(force=True)
    late = member(open_store(uri), "late", heartbeat=10.0, timeout=60.0)
    assert b.holds("late", late.writer)


def test_attempts_of_a_worker_without_heartbeat_are_not_held(tmp_path: Path) -> None:
    """Records from before heartbeats existed (or of a worker that left) hold nothing."""
    b = member(open_store(str(tmp_path / "p.txt")), "b")
    b.observe(force=True)
    assert not b.holds("vm-old", "0123456789ab")


def test_a_stalled_worker_checks_its_place_before_writing(tmp_path: Path) -> None:
    """A worker that has not beaten for longer than the timeout allows beats before any write,
    and so refuses the write once it was declared dead meanwhile.
    """
    uri = str(tmp_path / "p.txt")
    store = open_store(uri)
    a = store.fleet("a", HEARTBEAT, TIMEOUT)
    a.join(grace=0.1)
    b = member(open_store(uri), "b")
    b.observe(force=True)
    while b.holds("a", a.writer):
        time.sleep(0.05)
    with pytest.raises(FencedError):
        store.start("e", 1)
    assert open_store(uri).load().of("e") == []


@pytest.mark.parametrize(
    ("worker_id", "message"),
    [
        ("", "can't be empty"),
        ("x" * 101, "101 characters"),
        ("a/b", "'/'"),
        ("a\nb", "control character"),
        ("a\x7fb", "control character"),
        ("a\x85b", "control character"),  # a C1 control: invisible on a terminal
        ("a\u2028b", "control character"),
        ("a\udc85b", "undecodable byte"),  # a byte of the command line that is not UTF-8
        ("   ", "can't be empty"),
    ],
)
def test_bad_worker_ids_are_refused(worker_id: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        check_worker_id(worker_id)


@pytest.mark.parametrize(
    ("heartbeat", "timeout", "message"),
    [
        (0, 60, "--heartbeat must be at least"),
        (-1, 60, "--heartbeat must be at least"),
        (float("nan"), 60, "--heartbeat must be at least"),
        (0.001, 1, "--heartbeat must be at least 0.1 s"),  # a typo would mean 1,000 writes a second
        (10, 20, "more than twice --heartbeat"),
        (10, float("inf"), "more than twice --heartbeat"),
    ],
)
def test_bad_heartbeat_timings_are_refused(heartbeat: float, timeout: float, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        check_timing(heartbeat, timeout)


def test_default_worker_id_is_the_indexed_jobs_name_and_index() -> None:
    """An Indexed Job's pod keeps its id across replacements; elsewhere ids differ per process."""
    assert default_worker_id({"JOB_COMPLETION_INDEX": "3"}, host="evals-3") == "evals-3"
    assert default_worker_id({"JOB_COMPLETION_INDEX": "3", "JOB_NAME": "evals"}, host="evals-3-xk2p9") == "evals-3"
    assert default_worker_id({"JOB_COMPLETION_INDEX": "3"}, host="pod") == "pod-3"
    first, second = default_worker_id({}, host="laptop"), default_worker_id({}, host="laptop")
    assert first.startswith("laptop-")
    assert first != second
    check_worker_id(first)


def test_a_heartbeat_object_that_is_not_ours_is_not_parsed() -> None:
    assert Heartbeat.from_bytes(b"not json") is None
    assert Heartbeat.from_bytes(b'{"worker": "a"}') is None


def test_a_heartbeat_from_another_pid_namespace_is_never_taken_for_gone(tmp_path: Path) -> None:
    """Containers that share the host name (hostNetwork pods) have pids of their own: a pid that
    does not exist here says nothing about a process in another PID namespace.
    """
    uri = str(tmp_path / "p.txt")
    member(open_store(uri), "a", heartbeat=10.0, timeout=60.0)
    (mine,) = open_store(uri).workers()
    assert mine.pid_ns
    elsewhere = replace(mine, pid=2**22 + 7, pid_ns="pid:[1]")  # no such pid here
    assert not elsewhere.process_gone()
    assert replace(mine, pid=2**22 + 7).process_gone()  # the same namespace: it is gone


def test_a_fenced_worker_neither_compacts_nor_saves_logs(tmp_path: Path) -> None:
    """Writes nothing more: no snapshot, no progress file, no log."""
    uri = str(tmp_path / "p.txt")
    store = open_store(uri)
    old = store.fleet("w", HEARTBEAT, TIMEOUT)
    old.join(grace=0.1)
    store.record(store.start("e", 1))
    member(open_store(uri), "w")  # takes the id over
    with pytest.raises(FencedError):
        old.beat()
    with pytest.raises(FencedError):
        store.compact()
    with pytest.raises(FencedError):
        store.save_log("e", 1, b"output")
    assert not (tmp_path / "p.txt").exists()
    assert not (tmp_path / "p.txt.d" / "snapshot.json").exists()
