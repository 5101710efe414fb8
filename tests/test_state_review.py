"""Adversarial review of state folders and results (issue 9): reproductions of defects found in
batchrun/state.py, _statefiles.py, results.py, _results_cli.py and the backends' file primitives.
Each failed before its fix; the one still open carries ``xfail(strict=True)`` naming its finding.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import BUCKET, Wrapped, fake_command, open_store
from state_helpers import attempt, contents, keeper, write

from batchrun import CommandTemplate, EvalSet, RunPlan
from batchrun._console import Console
from batchrun._identity import RunIdentity
from batchrun._results_cli import pull
from batchrun._signals import StopRequest
from batchrun._state import Attempt, Outcome, RunState
from batchrun.errors import BatchrunError, StoreError
from batchrun.plan import StateConfig
from batchrun.progress import ProgressStore
from batchrun.results import keep, keep_unkept, results_folder, source
from batchrun.runner import Runner
from batchrun.state import stored_folder, synced_attempts

# --- helpers (as in test_state_store.py) ------------------------------------------------------


def restored(store: ProgressStore, root: Path, name: str, number: int) -> dict[str, str]:
    """What a new attempt *number* of *name* finds in its folder, on a machine of its own."""
    with keeper(store, root).folder(attempt(name, number, writer="next")) as folder:
        return contents(folder.local)


def stored_text(store: ProgressStore, folder: str) -> dict[str, str]:
    """The files below a stored *folder*, read back as text."""
    found = {}
    for name in store.backend.files(folder):
        blob = store.backend.read(f"{folder}/{name}")
        assert blob is not None
        found[name] = blob.data.decode()
    return found


def completed(*attempts: Attempt) -> RunState:
    state = RunState()
    state.merge(a.finished(Outcome.COMPLETED, exit_code=0) for a in attempts)
    return state


@pytest.fixture(params=["local", "memory", "s3"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A progress URI on each backend (LocalStack left out: the contract suite covers it)."""
    if request.param == "memory":
        import fsspec

        fsspec.filesystem("memory").store.clear()
        return f"memory://review/{tmp_path.name}/m.s.progress.txt"
    if request.param == "local":
        return str(tmp_path / "progress" / "m.s.progress.txt")
    request.getfixturevalue("s3")
    return f"s3://{BUCKET}/review/m.s.progress.txt"


def memory_uri(tmp_path: Path) -> str:
    import fsspec

    fsspec.filesystem("memory").store.clear()
    return f"memory://review/{tmp_path.name}/m.s.progress.txt"


# --- finding 1: a keep cut off while it deletes the state loses results ------------------------


def test_a_keep_cut_off_while_it_deletes_the_state_loses_no_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """memory:// (as any generic fsspec store, e.g. gs://): FsspecBackend.delete_tree removes the
    deepest objects first, so attempt 1's files go before its marker. The kill comes after two of
    them. What pull reads meanwhile, and the results the next run keeps, must be whole.
    """
    store = open_store(memory_uri(tmp_path))
    one = attempt("e", 1)
    with keeper(store, tmp_path / "pod").folder(one) as folder:
        write(folder.local, {"a.eval": "1", "b.eval": "2", "c.eval": "3"})
        folder.sync(force=True)
    fs: Any = store.backend.fs  # type: ignore[attr-defined]
    real_rm_file, removed = fs.rm_file, []

    def rm_file(path: str) -> None:
        if "/state/" in path and len(removed) == 2:
            raise StoreError("killed here")
        removed.append(path)
        real_rm_file(path)

    with monkeypatch.context() as patched:
        patched.setattr(fs, "rm_file", rm_file)
        with pytest.raises(StoreError):
            keep(store, "e", 1)  # the copy to results/ finished; the kill comes during the deletion
    state = completed(one)
    found = source(store, state, "e", unfinished=False)
    assert found is not None
    seen_by_pull = sorted(store.backend.files(found.folder))
    keep_unkept(store, state, ("e",))  # the next run's start
    assert sorted(store.backend.files(results_folder(store, "e"))) == ["a.eval", "b.eval", "c.eval"]
    assert seen_by_pull == ["a.eval", "b.eval", "c.eval"]


# --- finding 2: a synced-state marker counted before it is written ----------------------------


class FailOnce(Wrapped):
    """Fails the first call of *method* whose path contains *needle* (a transient store error)."""

    def __init__(self, inner: Any, method: str, needle: str) -> None:
        super().__init__(inner)
        self.method, self.needle, self.failed = method, needle, False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.inner, name)
        if name != self.method:
            return real

        def call(path: str | list[str], *args: Any, **kwargs: Any) -> Any:
            if not self.failed and self.needle in str(path):
                self.failed = True
                raise StoreError("503 SlowDown (after all retries)")
            return real(path, *args, **kwargs)

        return call


def test_a_failed_marker_write_is_written_by_the_next_sync(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    one = attempt("e", 1)
    with keeper(store, tmp_path / "pod").folder(one) as folder:
        write(folder.local, {"log.eval": "all samples"})
        inner = store.backend
        store.backend = FailOnce(inner, "write", "/e/1.json")  # type: ignore[assignment]
        with pytest.raises(StoreError):
            folder.sync()  # a periodic sync: the file went, the marker's PUT failed
        store.backend = inner
        assert folder.last_sync(force=True, timeout=None)  # the eval completed: its last sync
    assert 1 in synced_attempts(store, "e"), "a completion would now be recorded without its state's marker"


def test_a_completion_whose_marker_write_failed_once_keeps_its_results(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    one = attempt("e", 1)
    with keeper(store, tmp_path / "pod").folder(one) as folder:
        write(folder.local, {"log.eval": "all samples"})
        inner = store.backend
        store.backend = FailOnce(inner, "write", "/e/1.json")  # type: ignore[assignment]
        with pytest.raises(StoreError):
            folder.sync()
        store.backend = inner
        folder.last_sync(force=True, timeout=None)
    store.backend = FailOnce(inner, "copy", "/e/1/")  # type: ignore[assignment]
    with pytest.raises(StoreError):
        keep(store, "e", 1)  # killed before its first copy
    store.backend = inner
    keep_unkept(store, completed(one), ("e",))  # the next run's start
    assert stored_text(store, results_folder(store, "e")) == {"log.eval": "all samples"}


# --- finding 3: a stale holder's keep deletes the new holder's state ----------------------------


def test_a_worker_that_lost_its_claim_and_completes_never_deletes_the_new_holders_state(
    uri: str, tmp_path: Path
) -> None:
    old_store, new_store = open_store(uri), open_store(uri)
    with keeper(old_store, tmp_path / "old").folder(attempt("e", 1, writer="old")) as old:
        write(old.local, {"a": "sample 1", "b": "sample 2"})
        old.sync()
        with keeper(new_store, tmp_path / "new").folder(attempt("e", 2, writer="new")) as new:
            write(new.local, {"b": "sample 2, redone"})
            new.sync()
            old.sync(force=True)  # the stalled old holder wakes, its eval exits 0 ...
            keep(old_store, "e", 1)  # ... and its completion's state becomes the results
            write(new.local, {"c": "sample 3"})
            new.sync(force=True)  # the new holder completes too
            keep(new_store, "e", 2)
            expected = contents(new.local)
    assert stored_text(new_store, results_folder(new_store, "e")) == expected


def test_a_stale_holders_late_completion_never_wipes_the_kept_results(uri: str, tmp_path: Path) -> None:
    old_store, new_store = open_store(uri), open_store(uri)
    with keeper(old_store, tmp_path / "old").folder(attempt("e", 1, writer="old")) as old:
        write(old.local, {"a": "sample 1", "b": "sample 2"})
        old.sync()
        with keeper(new_store, tmp_path / "new").folder(attempt("e", 2, writer="new")) as new:
            write(new.local, {"c": "sample 3"})
            new.sync()  # its first sync: attempt 1's folder goes
            new.sync(force=True)  # the new holder completes ...
            keep(new_store, "e", 2)  # ... and keeps its results
            expected = contents(new.local)
        old.last_sync(force=True, timeout=None)  # the stalled old holder's eval exits 0 too
        keep(old_store, "e", 1)
    assert stored_text(new_store, results_folder(new_store, "e")) == expected


# --- finding 4: the first sync copies from a folder that changed since the restore --------------


def test_the_first_sync_never_copies_what_a_stale_holder_wrote_after_the_restore(uri: str, tmp_path: Path) -> None:
    old_store, new_store = open_store(uri), open_store(uri)
    with keeper(old_store, tmp_path / "old").folder(attempt("e", 1, writer="old")) as old:
        write(old.local, {"a": "1", "b": "1"})
        old.sync()
        with keeper(new_store, tmp_path / "new").folder(attempt("e", 2, writer="new")) as new:
            write(old.local, {"a": "stale: the old holder went on"})
            old.sync()  # a stalled worker that has not found out yet
            write(new.local, {"b": "2"})
            new.sync()  # a is unchanged since the restore: copied from attempt 1's folder
            expected = contents(new.local)
    assert restored(new_store, tmp_path / "third", "e", 3) == expected


# --- finding 5: the local record names what the folder held after the sync, not what was sent ---


class OnUpload(Wrapped):
    """Calls *hook* (once) just before the upload of a stored path ending with *suffix*."""

    def __init__(self, inner: Any, suffix: str, hook: Any) -> None:
        super().__init__(inner)
        self.suffix, self.hook = suffix, hook

    def upload(self, local: str, path: str) -> None:
        if self.hook is not None and path.endswith(self.suffix):
            hook, self.hook = self.hook, None
            hook()
        self.inner.upload(local, path)


def test_a_file_changed_during_a_sync_is_not_taken_for_stored_after_a_restart(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    pod = tmp_path / "pod"  # the emptyDir, which survives a container restart
    with keeper(store, pod).folder(attempt("e", 1)) as folder:
        write(folder.local, {"a": "v1", "b": "v1"})
        folder.sync()
        write(folder.local, {"b": "v2"})
        inner = store.backend
        # While the changed b is sent (after the sync's last scan), the tool rewrites a.
        rewrite_a = lambda: write(folder.local, {"a": "v2, written during the sync"})  # noqa: E731
        store.backend = OnUpload(inner, "/b", rewrite_a)  # type: ignore[assignment]
        folder.sync()
        store.backend = inner
    # The container is killed before the next sync, and restarts in the same pod.
    with keeper(store, pod).folder(attempt("e", 2)) as folder:
        write(folder.local, {"c": "new"})
        folder.sync()
        expected = contents(folder.local)  # what the tool of attempt 2 worked from
    assert restored(store, tmp_path / "other-pod", "e", 3) == expected


# --- finding 6: a file changed after the sync's last scan breaks the order promise -------------


def test_a_manifest_rewritten_during_a_sync_never_names_a_part_that_is_not_stored(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {"p0": "part 0", "manifest": "p0"})
        folder.sync()
        write(folder.local, {"p1": "part 1", "manifest": "p0 p1"})
        inner = store.backend
        store.backend = OnUpload(  # type: ignore[assignment]
            inner, "/manifest", lambda: write(folder.local, {"p2": "part 2", "manifest": "p0 p1 p2"})
        )
        folder.sync()  # a kill right after it leaves the store as it is now
        store.backend = inner
    found = stored_text(store, f"{stored_folder(store, 'e')}/1")
    missing = [part for part in found["manifest"].split() if part not in found]
    assert not missing, f"the stored manifest names {missing}, not stored"


def test_a_sync_that_runs_out_of_rounds_never_sends_a_manifest_ahead_of_its_parts(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))

    class Busy(Wrapped):
        """Each part sent gives the tool time to write the next part and its manifest."""

        parts = 2

        def upload(self, local: str, path: str) -> None:
            if path.rsplit("/", 1)[-1].startswith("p") and self.parts < 8:
                write(
                    local.rsplit("/", 1)[0],
                    {f"p{self.parts}": "part", "manifest": " ".join(f"p{i}" for i in range(self.parts + 1))},
                )
                self.parts += 1
            self.inner.upload(local, path)

    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {"p0": "part", "manifest": "p0"})
        folder.sync()
        write(folder.local, {"p1": "part", "manifest": "p0 p1"})
        store.backend = Busy(store.backend)  # type: ignore[assignment]
        folder.sync()
        store.backend = store.backend.inner  # type: ignore[attr-defined]
    found = stored_text(store, f"{stored_folder(store, 'e')}/1")
    missing = [part for part in found["manifest"].split() if part not in found]
    assert not missing, f"the stored manifest names {missing}, not stored"


# --- finding 7: state folders are not fenced across a reset / --fresh ----------------------------


def test_a_writer_that_outlives_a_reset_never_mixes_into_the_new_runs_results(tmp_path: Path) -> None:
    uri = str(tmp_path / "store" / "m.s.progress.txt")
    old_store = open_store(uri)
    old_store.claim(RunIdentity("m", "s", "cmd", (), ("e",)))  # each run has its generation
    with keeper(old_store, tmp_path / "old").folder(attempt("e", 1, writer="old")) as old:
        write(old.local, {"a": "old run"})
        old.sync()
        open_store(uri).reset()  # `batchrun reset`, or a `run --fresh`, while the old pod is still stopping
        new_store = open_store(uri)
        new_store.claim(RunIdentity("m", "s", "cmd", (), ("e",)))
        with keeper(new_store, tmp_path / "new").folder(attempt("e", 1, writer="new")) as new:
            assert contents(new.local) == {}
            write(new.local, {"b": "new run"})
            new.sync()
            write(old.local, {"c": "old run, its last sync after the grace"})
            old.sync()
            new.sync(force=True)
            keep(new_store, "e", 1)
            expected = contents(new.local)
    assert stored_text(new_store, results_folder(new_store, "e")) == expected


# --- finding 8: leaving syncing() waits for an in-flight sync, whatever --final-sync-timeout says ---


def test_a_periodic_sync_in_flight_does_not_hold_up_a_stop_beyond_the_final_sync_timeout(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    sending = threading.Event()

    class Slow(Wrapped):
        def upload(self, local: str, path: str) -> None:
            sending.set()
            time.sleep(2.0)  # a big file, or a store being retried
            self.inner.upload(local, path)

    with keeper(store, tmp_path / "pod", interval=0.05).folder(attempt("e", 1)) as folder:
        write(folder.local, {"big.eval": "x"})
        store.backend = Slow(store.backend)  # type: ignore[assignment]
        syncing = folder.syncing()
        syncing.__enter__()
        assert sending.wait(5)
        stopped = time.monotonic()  # the eval exits after the stop signal
        syncing.__exit__(None, None, None)
        folder.last_sync(force=False, timeout=0.3)  # --final-sync-timeout 0.3
        took = time.monotonic() - stopped
        store.backend = store.backend.inner  # type: ignore[attr-defined]
    assert took < 1.0, f"the stop waited {took:.1f} s"


# --- finding 9: a file replaced by a folder of the same name -----------------------------------


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_a_file_replaced_by_a_folder_of_the_same_name_syncs(kind: str, tmp_path: Path) -> None:
    uri = memory_uri(tmp_path) if kind == "memory" else str(tmp_path / "store" / "m.s.progress.txt")
    store = open_store(uri)
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {"logs": "one file"})
        folder.sync()
        write(folder.local, {"logs": None, "logs/1.log": "a folder now"})
        assert folder.sync()
    assert restored(store, tmp_path / "pod2", "e", 2) == {"logs/1.log": "a folder now"}


@pytest.mark.usefixtures("s3")
def test_a_cut_sync_of_a_file_replaced_by_a_folder_leaves_a_restorable_store(tmp_path: Path) -> None:
    store = open_store(f"s3://{BUCKET}/review/m.s.progress.txt")
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {"logs": "one file"})
        folder.sync()
        write(folder.local, {"logs": None, "logs/1.log": "a folder now"})
        inner = store.backend
        store.backend = FailOnce(inner, "delete", "")  # type: ignore[assignment]
        with pytest.raises(StoreError):
            folder.sync()  # killed before the deletion of logs
        store.backend = inner
    assert restored(store, tmp_path / "pod2", "e", 2) in ({"logs": "one file"}, {"logs/1.log": "a folder now"})


# --- finding 10: names S3 can't hold, or that s3fs rewrites --------------------------------------


@pytest.mark.usefixtures("s3")
def test_a_file_name_s3_cannot_hold_does_not_stop_the_rest_of_the_folder_syncing(tmp_path: Path) -> None:
    store = open_store(f"s3://{BUCKET}/review/m.s.progress.txt")
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {"first": "1"})
        odd = os.fsdecode(os.fsencode(folder.local) + b"/latin1-\xe9t\xe9.json")  # a tool's own naming
        Path(odd).write_bytes(b"{}")
        time.sleep(0.002)
        write(folder.local, {"log.eval": "all samples"})
        folder.sync()
    assert restored(store, tmp_path / "pod2", "e", 2) == {"first": "1", "log.eval": "all samples"}


@pytest.mark.xfail(
    strict=True,
    reason="finding 10: upload/download/copy pass keys through s3fs's split_path, which cuts '?versionId=...' "
    "off a key: a file so named silently overwrites (or is overwritten by) its prefix",
)
@pytest.mark.usefixtures("s3")
def test_a_file_name_with_a_version_query_round_trips_on_s3(tmp_path: Path) -> None:
    store = open_store(f"s3://{BUCKET}/review/m.s.progress.txt")
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {"v?versionId=2": "other", "v": "plain"})
        folder.sync()
    assert restored(store, tmp_path / "pod2", "e", 2) == {"v?versionId=2": "other", "v": "plain"}


# --- finding 11: a local write error (disk full) escapes as a crash -----------------------------


def test_a_record_that_cannot_be_written_does_not_stop_the_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    died: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    with keeper(store, tmp_path / "pod", interval=0.05).folder(attempt("e", 1)) as folder:
        blocked = Path(f"{folder.local}.synced.json.tmp")
        blocked.mkdir()  # stands for ENOSPC: the record can't be written
        with folder.syncing():
            write(folder.local, {"a": "1"})
            time.sleep(0.3)
            blocked.rmdir()  # space again
            write(folder.local, {"b": "2"})
            time.sleep(0.4)
    assert not died, died
    assert sorted(store.backend.files(f"{stored_folder(store, 'e')}/1")) == ["a", "b"]


# --- finding 12: links planted beside the local folder are followed ------------------------------


def test_the_local_record_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    states = keeper(store, tmp_path / "pod")  # creates the run's folder
    local = states.local("e")
    Path(f"{local}.synced.json.tmp").symlink_to(victim)
    Path(f"{local}.synced.json").symlink_to(victim)
    with states.folder(attempt("e", 1)) as folder:
        write(folder.local, {"a": "1"})
        with contextlib.suppress(BatchrunError):
            folder.sync()
    assert victim.read_text() == "precious"


def test_a_link_planted_in_the_state_root_is_refused(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "root"
    run_folder = Path(keeper(store, tmp_path / "probe").local("e")).parent.name
    root.mkdir()
    (root / run_folder).symlink_to(elsewhere)
    with pytest.raises(BatchrunError, match="symbolic link"):
        keeper(store, root)
    assert list(elsewhere.iterdir()) == []


# --- finding 13: the fallback folder's name --------------------------------------------------------


def test_the_fallback_folder_is_named_from_plain_characters_only(tmp_path: Path) -> None:
    root = tmp_path / "pod"
    first = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    second = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    with (
        keeper(first, root).folder(attempt("e", 1)),
        keeper(second, root).folder(attempt("e", 2)) as other,
    ):
        relative = os.path.relpath(other.local, root)
    assert re.fullmatch(r"[A-Za-z0-9._/-]+", relative), relative


# --- finding 14: pull into a folder of an earlier pull ---------------------------------------------


def _attempt_one_failed(tmp_path: Path) -> tuple[ProgressStore, str, Path]:
    """A local store where attempt 1 of e failed with its state synced: (store, uri, set file)."""
    uri = str(tmp_path / "store" / "m.s.progress.txt")
    (tmp_path / "set.txt").write_text("e\n")
    store = open_store(uri)
    one = store.start("e", 1)
    with keeper(store, tmp_path / "pod1").folder(one) as folder:
        write(folder.local, {"2024-01-01_try1.eval": "failed log"})
        folder.sync()
    store.record(one.finished(Outcome.FAILED, exit_code=1))
    return store, uri, tmp_path / "set.txt"


def _attempt_two_completed(store: ProgressStore, tmp_path: Path) -> None:
    """Attempt 2 of e completes (the log of attempt 1 deleted, a new one written); its results are kept."""
    two = store.start("e", 2)
    with keeper(store, tmp_path / "pod2").folder(two) as folder:
        write(folder.local, {"2024-01-01_try1.eval": None, "2024-01-02_try2.eval": "successful log"})
        folder.sync(force=True)
    store.record(two.finished(Outcome.COMPLETED, exit_code=0))
    keep(store, "e", 2)


def test_pull_over_an_earlier_pull_of_the_state_leaves_only_the_results(tmp_path: Path) -> None:
    store, uri, evals = _attempt_one_failed(tmp_path)
    out = tmp_path / "out"
    pull("m", str(evals), to=str(out), unfinished=True, progress=uri)  # a look at the failed attempt
    assert sorted(p.name for p in (out / "e").iterdir()) == ["2024-01-01_try1.eval"]
    _attempt_two_completed(store, tmp_path)
    pull("m", str(evals), to=str(out), progress=uri)  # the results, into the same folder
    assert sorted(p.name for p in (out / "e").iterdir()) == ["2024-01-02_try2.eval"]


def test_pull_to_a_file_is_bad_input_not_an_internal_error(tmp_path: Path) -> None:
    """main() turns a BatchrunError into one line and its exit code, any other exception into exit 70."""
    store, uri, evals = _attempt_one_failed(tmp_path)
    _attempt_two_completed(store, tmp_path)
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    with pytest.raises(BatchrunError):
        pull("m", str(evals), to=str(target), progress=uri)


# --- finding 16: uploads are read whole into memory on S3 -------------------------------------------


@pytest.mark.usefixtures("s3")
def test_an_upload_to_s3_is_streamed_not_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(f"s3://{BUCKET}/review/m.s.progress.txt")
    fs: Any = store.backend.fs  # type: ignore[attr-defined]
    real_call, bodies = fs._call_s3, []  # noqa: SLF001 - the request s3fs sends

    async def call_s3(method: str, *args: Any, **kwargs: Any) -> Any:
        body = kwargs.get("Body")
        if isinstance(body, bytes | bytearray):
            bodies.append(len(body))
        return await real_call(method, *args, **kwargs)

    monkeypatch.setattr(fs, "_call_s3", call_s3)
    blob = os.urandom(1 << 20) * 20  # 20 MiB
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        Path(folder.local, "big.eval").write_bytes(blob)
        folder.sync()
    assert max(bodies) <= 8 << 20, f"a request body of {max(bodies) >> 20} MiB held in memory"


# --- finding 17: a restore ignores a stop --------------------------------------------------------


def test_a_stop_during_a_restore_does_not_wait_for_the_whole_folder(tmp_path: Path) -> None:
    uri = str(tmp_path / "p.txt")
    first = open_store(uri)
    one = first.start("e", 1)
    with keeper(first, tmp_path / "pod1").folder(one) as folder:
        write(folder.local, {f"part{i}.eval": str(i) for i in range(8)})
        folder.sync()
    first.record(one.finished(Outcome.FAILED, exit_code=1))
    stop = StopRequest()
    downloads: list[float] = []

    class Slow(Wrapped):
        def download(self, path: str, local: str) -> None:
            downloads.append(time.monotonic())
            if len(downloads) == 1:
                stop.request(signal.SIGTERM)  # the node is being reclaimed
            time.sleep(0.25)  # a big file
            self.inner.download(path, local)

    store = open_store(uri)
    store.backend = Slow(store.backend)  # type: ignore[assignment]
    plan = RunPlan(
        "m",
        EvalSet("s", ("e",), "t"),
        CommandTemplate.parse(fake_command(tmp_path / "journal")),
        grace=0.5,
        state=StateConfig(str(tmp_path / "pod2"), 30.0, False, 0.3),
    )
    summary = Runner(plan, store, Console(out=io.BytesIO(), err=io.StringIO(), bar=False), stop).run()
    assert summary.stopped_by == signal.SIGTERM
    assert len(downloads) <= 2, (
        f"{len(downloads)} files downloaded after the stop, over {downloads[-1] - downloads[0]:.1f} s"
    )


# --- what held up ---------------------------------------------------------------------------------


def test_restore_never_writes_outside_the_folder_for_hostile_stored_names(tmp_path: Path) -> None:
    """Names planted in the store that would leave the local folder are skipped by restore and pull."""
    import fsspec

    fsspec.filesystem("memory").store.clear()
    store = open_store(f"memory://review/{tmp_path.name}/m.s.progress.txt")
    one = attempt("e", 1)
    with keeper(store, tmp_path / "pod").folder(one) as folder:
        write(folder.local, {"ok": "1"})
        folder.sync()
    base = f"{stored_folder(store, 'e')}/1"
    for name in ("../escape", "a/../../escape2", "./dot", "sub//x"):
        store.backend.write(f"{base}/{name}", b"evil")
    got = restored(store, tmp_path / "pod2", "e", 2)
    assert "ok" in got
    assert not list(tmp_path.rglob("escape*"))


def test_a_planted_link_inside_a_leftover_folder_is_removed_not_followed(tmp_path: Path) -> None:
    """A leftover local folder holding a link to a victim folder is emptied without touching the victim."""
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    states = keeper(store, tmp_path / "pod")
    with states.folder(attempt("e", 1)) as folder:
        write(folder.local, {"a": "1"})
        folder.sync()
        Path(folder.local, "link").symlink_to(victim)
    assert "link" not in restored(store, tmp_path / "pod", "e", 2)
    assert (victim / "keep.txt").read_text() == "precious"


def test_odd_names_and_dot_files_round_trip(uri: str, tmp_path: Path) -> None:
    """[, *, %, ?, #, CJK, carriage return, a 200-byte name and .buffer/ all survive a sync and a restore."""
    store = open_store(uri)
    files = {
        "a[1]*?.json": "1",
        "%41%2F.txt": "2",
        "評価/結果.eval": "3",
        "cr\rname": "4",
        ".buffer/seg.0": "5",
        "x" * 200: "6",
        "#frag ment ": "7",
    }
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, files)
        folder.sync()
    assert restored(store, tmp_path / "pod2", "e", 2) == files


def test_a_file_deleted_while_the_sync_sends_it_is_skipped_and_the_folders_are_private(
    uri: str, tmp_path: Path
) -> None:
    """A file that vanishes just before its upload does not fail the sync; the next sync leaves the
    store without it; the local folders are created 0700.
    """
    store = open_store(uri)
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {"a": "1", "tmp.part": "2", "b": "3"})
        inner = store.backend
        store.backend = OnUpload(inner, "/tmp.part", lambda: write(folder.local, {"tmp.part": None}))  # type: ignore[assignment]
        assert folder.sync()
        store.backend = inner
        write(folder.local, {"c": "4"})
        folder.sync()
        assert (Path(folder.local).stat().st_mode & 0o777) == 0o700
        assert (Path(folder.local).parent.stat().st_mode & 0o777) == 0o700
    assert restored(store, tmp_path / "pod2", "e", 2) == {"a": "1", "b": "3", "c": "4"}
