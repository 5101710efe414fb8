"""Store defects found in review (issue 7), each pinned by a test that failed before its fix:
glob characters in keys, racing compactors and resets, attempt numbers unique across writers,
long eval names, truncated replies, 409 conflicts, and retries that show.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import open_store
from structlog.testing import capture_logs

from batchrun import ConflictError, Outcome, RunIdentity, StoreError
from batchrun._backends import retrying
from batchrun._state import EvalState
from batchrun.errors import AttemptTakenError
from batchrun.location import resolve_location
from batchrun.progress import ProgressStore, encode_key

GLOBBY = "m[1]*?{a,b}%#\\"
WEIRD_EVALS = ["a[1]", "b*", "c?", "{d,e}", "f%2F", "g#h", "i\\j", "長い名前" * 3]


def store_for_model(uri: str, model: str) -> ProgressStore:
    """A store beside *uri* for a run of *model* (filled in as `run` fills in {model})."""
    template = uri.rsplit("/", 1)[0] + "/{model}.{eval_set}.progress.txt"
    return ProgressStore.open(resolve_location(template, model=model, eval_set="s"))


def complete(store: ProgressStore, name: str, number: int = 1) -> None:
    store.record(store.start(name, number).finished(Outcome.COMPLETED, exit_code=0))


def run_identity(evals: tuple[str, ...] = ("a",)) -> RunIdentity:
    return RunIdentity("m", "s", "cmd {eval}", (), evals)


@pytest.mark.parametrize("model", ["m[1]", "m?", "m*", GLOBBY])
def test_reset_and_compaction_treat_glob_characters_literally(progress_uri: str, model: str) -> None:
    """Resetting or compacting a run whose name holds glob characters touches only that run's keys."""
    plain = store_for_model(progress_uri, "m1")
    globby = store_for_model(progress_uri, model)
    for store in (plain, globby):
        store.claim(run_identity(tuple(WEIRD_EVALS)))
        for name in WEIRD_EVALS:
            complete(store, name)
        store.save_log(WEIRD_EVALS[0], 1, b"output\n")
        store.compact()  # failed with exit 3 on S3 before: rm() expanded the key as a pattern
    assert globby.backend.read(globby.location.path).data.decode().splitlines() == WEIRD_EVALS  # type: ignore[union-attr]
    globby.reset()
    assert not store_for_model(progress_uri, model).exists()
    survivor = store_for_model(progress_uri, "m1")
    assert [survivor.load().state(n) for n in WEIRD_EVALS] == [EvalState.DONE] * len(WEIRD_EVALS)
    assert survivor.backend.read(survivor.location.path) is not None
    assert survivor.read_log(WEIRD_EVALS[0], 1) == b"output\n"


def test_a_long_eval_name_gets_a_short_unique_key(progress_uri: str) -> None:
    """Eval names whose encoded key would pass 255 bytes work on every backend, and stay distinct."""
    long_a, long_b = "評価" * 100 + "a", "評価" * 100 + "b"
    assert len(encode_key(long_a).encode()) < 200
    assert encode_key(long_a) != encode_key(long_b)
    store = open_store(progress_uri)
    for name in (long_a, long_b):
        complete(store, name)
        store.save_log(name, 1, name.encode())
    assert store.read_log(long_b, 1) == long_b.encode()
    assert store.logged_attempts(long_a) == [1]
    assert open_store(progress_uri).load().state(long_a) is EvalState.DONE


def test_an_attempt_number_is_claimed_by_one_writer_only(progress_uri: str) -> None:
    """Two writers (two pods) can't both start attempt 2 of an eval: the second gets AttemptTakenError."""
    first, second = open_store(progress_uri), open_store(progress_uri)
    for store in (first, second):
        store.claim(run_identity())
    first.start("a", 2)
    with pytest.raises(AttemptTakenError):
        second.start("a", 2)
    second.start("a", 3)
    assert [a.number for a in open_store(progress_uri).load().of("a")] == [2, 3]


class Paused:
    """A backend that stops before the first call matching *when* until released."""

    def __init__(self, inner: Any, when: Callable[[str, tuple[Any, ...]], bool]) -> None:
        self.inner = inner
        self.when = when
        self.reached = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.reached.is_set() and self.when(name, args):
                self.reached.set()
                assert self.release.wait(30), "never released"
            return target(*args, **kwargs)

        return call


def paused_compaction(store: ProgressStore, when: Callable[[str, tuple[Any, ...]], bool]) -> tuple[Paused, Any]:
    paused = Paused(store.backend, when)
    store.backend = paused  # type: ignore[assignment]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            store.compact()
        except StoreError as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    assert paused.reached.wait(30)
    return paused, (thread, errors)


def test_a_slow_compactor_never_puts_an_older_progress_file_back(progress_uri: str) -> None:
    """Of two racing compactors, the one that folded less can't overwrite the newer progress file."""
    slow, fast = open_store(progress_uri), open_store(progress_uri)
    for store in (slow, fast):
        store.claim(run_identity())
    complete(slow, "a")
    # The slow one has written its snapshot and is about to write P when the fast one folds more.
    paused, (thread, _) = paused_compaction(
        slow, lambda op, args: op in ("replace", "write") and args[0] == slow.location.path
    )
    complete(fast, "b")
    fast.compact()
    paused.release.set()
    thread.join()
    assert fast.backend.read(fast.location.path).data == b"a\nb\n"  # type: ignore[union-attr]


def test_a_reset_wins_over_a_compaction_in_flight(progress_uri: str) -> None:
    """A compaction that was about to write P when the run was reset writes nothing, and the next
    run on the store sees no completion of the old run.
    """
    old = open_store(progress_uri)
    old.claim(run_identity())
    complete(old, "a")
    paused, (thread, _) = paused_compaction(old, lambda op, args: op == "replace" and args[0] == old.location.path)
    open_store(progress_uri).reset()
    paused.release.set()
    thread.join()
    complete(old, "late")  # a writer that outlived the reset keeps writing: under its old generation
    fresh = open_store(progress_uri)
    fresh.check_importable()
    fresh.claim(run_identity())
    state = fresh.load()
    assert state.state("a") is EvalState.PENDING
    assert state.state("late") is EvalState.PENDING
    fresh.compact()
    assert fresh.backend.read(fresh.location.path).data == b""  # type: ignore[union-attr]


def test_a_compactor_that_outlived_a_reset_does_not_clobber_the_new_run(progress_uri: str) -> None:
    """A writer of the reset run can't replace the new run's snapshot: its compaction fails instead."""
    old = open_store(progress_uri)
    old.claim(run_identity())
    complete(old, "a")
    open_store(progress_uri).reset()
    new = open_store(progress_uri)
    new.claim(run_identity())
    complete(new, "b")
    new.compact()
    complete(old, "c")
    with pytest.raises(StoreError, match="reset"):
        old.compact()
    assert open_store(progress_uri).load().completed_order() == ["b"]


class Flaky:
    """Wraps a callable: the first *failures* calls raise *error*, then it passes through."""

    def __init__(self, call: Callable[..., Any], error: Callable[[], BaseException], failures: int) -> None:
        self.call, self.error, self.failures, self.calls = call, error, failures, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return self.call(*args, **kwargs)


def test_a_reply_cut_off_mid_body_is_read_again(s3: str) -> None:  # noqa: ARG001 - the moto server
    """A GET whose body is shorter than its Content-Length (cut off, or racing a DELETE) is retried."""
    store = open_store("s3://batchrun-test/runs/m.s.progress.txt")
    path = f"{store.location.sidecar}/x.json"
    store.backend.write(path, b"0123456789" * 50)
    backend: Any = store.backend
    real_call = backend._call  # noqa: SLF001 - the one S3 call a cut-off reply comes through

    async def truncating(method: str, **kwargs: Any) -> dict[str, Any]:
        reply = await real_call(method, **kwargs)
        if method == "get_object" and not truncating.done:  # type: ignore[attr-defined]
            truncating.done = True  # type: ignore[attr-defined]
            await reply["Body"].read()

            class Short:
                async def read(self) -> bytes:
                    return b"0123"

                def close(self) -> None:
                    pass

            reply["Body"] = Short()
        return reply

    truncating.done = False  # type: ignore[attr-defined]
    backend._call = truncating  # noqa: SLF001
    with capture_logs() as logs:
        blob = store.backend.read(path)
    assert blob is not None
    assert blob.data == b"0123456789" * 50
    assert [e["event"] for e in logs] == ["store.retrying"]


def test_a_409_conflict_is_retried_and_then_a_conflict(s3: str) -> None:  # noqa: ARG001 - the moto server
    """S3's 409 ConditionalRequestConflict is retried; one that persists is a ConflictError, not exit 3."""
    store = open_store("s3://batchrun-test/runs/m.s.progress.txt")
    backend: Any = store.backend
    path = f"{store.location.sidecar}/snapshot.json"

    def busy() -> OSError:
        return OSError(errno.EBUSY, "ConditionalRequestConflict: try again")

    real = backend.fs.pipe_file
    backend.fs.pipe_file = Flaky(real, busy, failures=1)
    tag = store.backend.replace(path, b"v1", None)
    assert store.backend.read(path).data == b"v1"  # type: ignore[union-attr]
    backend.fs.pipe_file = Flaky(real, busy, failures=99)
    with pytest.raises(ConflictError):
        store.backend.replace(path, b"v2", tag)


def test_each_failed_retry_round_is_logged_and_then_the_error_is_a_store_error() -> None:
    """A store that keeps failing shows one log line per retry round, then gives up."""
    store = open_store("memory://runs/retry/m.s.progress.txt")
    failing = Flaky(lambda: None, lambda: OSError(errno.EIO, "connection reset"), failures=99)
    with capture_logs() as logs, pytest.raises(OSError, match="connection reset"):
        retrying(store.backend, "read", "x", failing, rounds=3)
    assert [e["event"] for e in logs] == ["store.retrying", "store.retrying"]
    assert failing.calls == 3
