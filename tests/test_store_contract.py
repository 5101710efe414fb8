"""The progress store's contract, run against memory://, a local folder and S3 on a moto server."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from helpers import BUCKET, open_store

from batchrun import Outcome, RunIdentity, RunIdentityError
from batchrun._state import EvalState
from batchrun.progress import ProgressStore


def complete(store: ProgressStore, name: str) -> None:
    attempt = store.start(name, 1)
    store.record(attempt.finished(Outcome.COMPLETED, exit_code=0))


class CountingBackend:
    """Wraps a backend and counts its calls and the bytes written."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.bytes_written = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name in ("create", "replace", "write"):
                self.bytes_written += len(args[1])
            return target(*args, **kwargs)

        return counted


def test_completions_survive_a_new_store_instance(progress_uri: str) -> None:
    """A completion recorded by one instance is seen by a fresh one, before any compaction."""
    complete(open_store(progress_uri), "a")
    state = open_store(progress_uri).load()
    assert state.state("a") is EvalState.DONE
    assert state.state("b") is EvalState.PENDING


def test_failed_attempt_is_never_completed(progress_uri: str) -> None:
    """A failed attempt leaves the eval failed, not done, and out of the progress file."""
    store = open_store(progress_uri)
    store.record(store.start("bad", 1).finished(Outcome.FAILED, exit_code=3, final=True, tail=("boom",)))
    complete(store, "good")
    store.compact()
    state = open_store(progress_uri).load()
    assert state.state("bad") is EvalState.FAILED
    assert state.of("bad")[0].tail == ("boom",)
    assert store.backend.read(store.location.path).data == b"good\n"  # type: ignore[union-attr]


def test_started_attempt_without_end_counts_but_is_pending(progress_uri: str) -> None:
    """An attempt whose pod vanished counts as an attempt and leaves the eval pending."""
    store = open_store(progress_uri)
    store.start("lost", 1)
    state = open_store(progress_uri).load()
    assert state.state("lost") is EvalState.PENDING
    assert state.next_number("lost") == 2


def test_progress_file_lists_completions_in_order(progress_uri: str) -> None:
    """After compaction the progress file holds one completed name per line, in completion order."""
    store = open_store(progress_uri)
    for name in ["c", "a", "b"]:
        complete(store, name)
    store.compact()
    assert store.backend.read(store.location.path).data == b"c\na\nb\n"  # type: ignore[union-attr]
    complete(store, "d")
    store.compact()
    assert store.backend.read(store.location.path).data == b"c\na\nb\nd\n"  # type: ignore[union-attr]


def test_compaction_folds_and_deletes_events(progress_uri: str) -> None:
    """Compaction leaves no events behind, and a reload sees the same state."""
    store = open_store(progress_uri)
    for name in "abc":
        complete(store, name)
    assert len(store.backend.listdir(store.location.events)) == 6
    store.compact()
    assert store.backend.listdir(store.location.events) == []
    assert open_store(progress_uri).load().completed_order() == ["a", "b", "c"]


def test_folding_an_event_twice_changes_nothing(progress_uri: str) -> None:
    """An event still present after its compaction (delete lost) is not counted twice."""
    store = open_store(progress_uri)
    store.start("x", 1)
    saved = {
        n: store.backend.read(f"{store.location.events}/{n}") for n in store.backend.listdir(store.location.events)
    }
    store.compact()
    for name, blob in saved.items():  # the events come back, as if the delete had been lost
        store.backend.create(f"{store.location.events}/{name}", blob.data, durable=False)  # type: ignore[union-attr]
    other = open_store(progress_uri)
    assert len(other.load().of("x")) == 1
    other.compact()
    assert len(open_store(progress_uri).load().of("x")) == 1


def test_two_writers_lose_nothing(progress_uri: str) -> None:
    """Two stores recording and compacting at once on one URI keep every record."""
    stores = [open_store(progress_uri), open_store(progress_uri)]
    if progress_uri.startswith("memory://"):
        stores[1].backend = stores[0].backend  # one process: memory:// shares its lock like a real store would

    def work(store: ProgressStore, prefix: str) -> None:
        for i in range(25):
            complete(store, f"{prefix}{i}")
            if i % 5 == 4:
                store.compact()

    threads = [threading.Thread(target=work, args=(s, p)) for s, p in zip(stores, "xy", strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stores[0].compact()
    done = open_store(progress_uri).load().completed_order()
    assert sorted(done) == sorted([f"x{i}" for i in range(25)] + [f"y{i}" for i in range(25)])
    lines = stores[0].backend.read(stores[0].location.path).data.decode().split()  # type: ignore[union-attr]
    assert sorted(lines) == sorted(done)


def test_recording_cost_does_not_grow_with_progress(progress_uri: str) -> None:
    """Recording a completion costs the same requests and bytes with 0 or 300 evals done: a claim,
    its start and its end, each one create-only write.
    """
    store = open_store(progress_uri)
    store.generation()  # a run knows its generation from its claim of the run identity

    def cost_of_one(name: str) -> tuple[Counter[str], int]:
        counting = CountingBackend(store.backend)
        store.backend = counting  # type: ignore[assignment]
        complete(store, name)
        store.backend = counting.inner
        return counting.calls, counting.bytes_written

    first = cost_of_one("first")
    for i in range(300):
        complete(store, f"eval-{i:04d}")
    store.compact()
    later = cost_of_one("later")  # same name length as "first"... near enough: compare requests
    assert first[0] == later[0] == Counter({"create": 3})
    assert abs(first[1] - later[1]) < 20


def test_loading_costs_constant_requests_plus_new_events(progress_uri: str) -> None:
    """Loading reads the run's identity (once), the snapshot and the events since the last
    compaction, nothing else.
    """
    store = open_store(progress_uri)
    for i in range(200):
        complete(store, f"e{i}")
    store.compact()
    complete(store, "new")
    reader = open_store(progress_uri)
    counting = CountingBackend(reader.backend)
    reader.backend = counting  # type: ignore[assignment]
    state = reader.load()
    assert state.state("new") is EvalState.DONE
    assert len(state.completed_order()) == 201
    assert counting.calls == Counter({"listdir": 1, "read": 4})  # run.json, 2 events, the snapshot


def test_readers_see_other_writers_immediately(progress_uri: str) -> None:
    """A store that has already read sees another instance's later writes (no stale cache)."""
    reader, writer = open_store(progress_uri), open_store(progress_uri)
    complete(writer, "one")
    writer.compact()
    assert reader.load().state("one") is EvalState.DONE
    complete(writer, "two")
    assert reader.load().state("two") is EvalState.DONE
    writer.compact()
    state = reader.load()
    assert state.completed_order() == ["one", "two"]


def test_create_that_finds_its_own_bytes_is_success(progress_uri: str) -> None:
    """A retried create-only write that finds our own bytes (lost reply) is not a conflict."""
    store = open_store(progress_uri)
    path = f"{store.location.events}/000000000000-000000001.json"
    store.backend.create(path, b"{}", durable=True)
    store.backend.create(path, b"{}", durable=True)
    from batchrun import ConflictError

    with pytest.raises(ConflictError):
        store.backend.create(path, b"{other}", durable=True)


@pytest.mark.usefixtures("s3")
def test_create_whose_object_was_folded_away_before_the_check_is_success() -> None:
    """A create-only PUT applied but whose reply was lost is sent again and refused (412); by
    the time we read the object to compare, a compactor may have folded and deleted it. It was
    written: no error (found by the fault torture in CI: "already exists with other content").
    """
    store = open_store(f"s3://{BUCKET}/folded/p.txt")
    backend = store.backend
    path = f"{store.location.events}/000000000000-000000001.json"
    fs = backend.fs  # type: ignore[attr-defined]
    real = fs.pipe_file

    def applied_then_folded(target: str, data: bytes, **kwargs: object) -> object:
        real(target, data, **kwargs)  # the PUT lands...
        fs.rm_file(target)  # ...a compactor folds it and deletes it...
        raise FileExistsError(target)  # ...and our retry of the lost reply was refused

    fs.pipe_file = applied_then_folded
    backend.create(path, b"{}", durable=True)


def test_stale_replace_is_a_conflict_unless_it_holds_our_bytes(progress_uri: str) -> None:
    """If-Match replace: a stale tag conflicts, except when the object already holds our write."""
    from batchrun import ConflictError

    store = open_store(progress_uri)
    path = f"{store.location.sidecar}/snapshot.json"
    tag1 = store.backend.replace(path, b"v1", None)
    tag2 = store.backend.replace(path, b"v2", tag1)
    with pytest.raises(ConflictError):
        store.backend.replace(path, b"v3", tag1)
    with pytest.raises(ConflictError):
        store.backend.replace(path, b"v3", None)
    if progress_uri.startswith("s3://"):  # a lost reply to our own If-Match PUT
        assert store.backend.replace(path, b"v2", tag1) == tag2
    assert store.backend.read(path).data == b"v2"  # type: ignore[union-attr]


def test_identity_is_kept_and_checked(progress_uri: str) -> None:
    """The first claim stores the identity; a new eval list is fine; once an eval has completed,
    another command or other extra args are refused, and another model or set always.
    """
    store = open_store(progress_uri)
    ident = RunIdentity("m", "s", "oaieval {model} {eval}", ("--x",), ("a", "b"))
    assert store.claim(ident) is None
    assert store.claim(RunIdentity("m", "s", "oaieval {model} {eval}", ("--x",), ("a", "b", "c"))) is None
    assert open_store(progress_uri).identity().evals == ("a", "b", "c")  # type: ignore[union-attr]
    with pytest.raises(RunIdentityError, match="model was 'm', now 'n'"):
        store.claim(RunIdentity("n", "s", "oaieval {model} {eval}", ("--x",), ("a",)))
    complete(store, "a")
    with pytest.raises(RunIdentityError, match=r"command was 'oaieval \{model\} \{eval\}', now 'other'"):
        store.claim(RunIdentity("m", "s", "other", ("--x",), ("a",)))
    with pytest.raises(RunIdentityError, match="extra_args was '--x', now '--y'"):
        store.claim(RunIdentity("m", "s", "oaieval {model} {eval}", ("--y",), ("a",)))


def test_oaievalset_progress_file_is_imported(progress_uri: str) -> None:
    """A progress file written by oaievalset (JSON argv lines) counts its evals as completed."""
    store = open_store(progress_uri)
    lines = b'["oaieval", "m", "test-match.s1.simple-v0"]\n["oaieval", "m", "b", "--max_samples", "5"]\n'
    store.backend.write(store.location.path, lines)
    state = open_store(progress_uri).load()
    assert state.completed_order() == ["test-match.s1.simple-v0", "b"]
    complete(store, "c")
    store.compact()
    assert store.backend.read(store.location.path).data == b"test-match.s1.simple-v0\nb\nc\n"  # type: ignore[union-attr]


def test_reset_forgets_everything(progress_uri: str) -> None:
    """Reset deletes the progress file, identity, snapshot and events."""
    store = open_store(progress_uri)
    store.claim(RunIdentity("m", "s", "c", (), ("a",)))
    complete(store, "a")
    store.compact()
    complete(store, "b")
    assert store.exists()
    store.reset()
    fresh = open_store(progress_uri)
    assert not fresh.exists()
    assert fresh.identity() is None
    assert fresh.load().attempts == {}


def test_attempt_records_round_trip_through_json() -> None:
    """Every field of an attempt, zero exit codes and epochs included, survives to_json/from_json."""
    from batchrun import Attempt

    for attempt in [
        Attempt("w-1", "e", 1, "host", 1.5, outcome=Outcome.COMPLETED, ended_at=2.0, exit_code=0),
        Attempt(
            "w-2",
            "e",
            2,
            "host",
            3.0,
            epoch=1,
            outcome=Outcome.FAILED,
            exit_code=-9,
            final=True,
            reason="timeout",
            tail=("x",),
        ),
        Attempt("w-3", "e", 0, "host", 0.0),
    ]:
        assert Attempt.from_json(attempt.to_json()) == attempt


def test_a_new_command_is_taken_while_no_eval_has_completed(progress_uri: str) -> None:
    """A command broken for every eval, fixed: the run goes on under the new command, in the same
    generation (the failed attempts still count), and the change is reported.
    """
    store = open_store(progress_uri)
    store.claim(RunIdentity("m", "s", "broken {eval}", (), ("a", "b")))
    generation = store.identity().generation  # type: ignore[union-attr]
    failed = store.start("a", 1)
    store.record(failed.finished(Outcome.FAILED, exit_code=2))
    changed = open_store(progress_uri).claim(RunIdentity("m", "s", "fixed {eval}", ("--y",), ("a", "b")))
    assert changed == "command was 'broken {eval}', now 'fixed {eval}'"
    stored = open_store(progress_uri).identity()
    assert (stored.command, stored.extra_args, stored.generation) == ("fixed {eval}", ("--y",), generation)  # type: ignore[union-attr]
    with pytest.raises(RunIdentityError, match="model was 'm', now 'n'"):
        open_store(progress_uri).claim(RunIdentity("n", "s", "fixed {eval}", ("--y",), ("a", "b")))
