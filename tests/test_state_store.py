"""Evals' state folders in the store (batchrun/state.py, results.py): restore, sync, delete, on
every backend; a sync cut off at every point; fencing by attempt number; what a sync costs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import Wrapped, open_store
from state_helpers import attempt, contents, keeper, write

from batchrun._state import Outcome, RunState
from batchrun._statefiles import local_path
from batchrun.errors import FencedError, StoreError
from batchrun.progress import ProgressStore
from batchrun.results import keep, keep_unkept, source
from batchrun.state import EvalFolder, stored_folder

WRITES = ("upload", "copy", "write", "delete", "delete_tree")


def restored(  # noqa: PLR0913 - the attempt's parts
    store: ProgressStore, root: Path, name: str, number: int, *, epoch: int = 0, keep_state: bool = False
) -> dict[str, str]:
    """What a new attempt *number* of *name* finds in its folder, on a machine of its own."""
    with keeper(store, root, keep_state=keep_state).folder(attempt(name, number, epoch)) as folder:
        return contents(folder.local)


class Counting(Wrapped):
    """Counts the calls made to the store; with *cut_after*, fails every write after that many (a kill)."""

    def __init__(self, inner: Any, cut_after: int | None = None) -> None:
        super().__init__(inner)
        self.calls: list[str] = []
        self.cut_after = cut_after

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            if name in WRITES and self.cut_after is not None:
                if self.cut_after <= 0:
                    raise StoreError("cut off (the process was killed here)")
                self.cut_after -= 1
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


def test_a_new_attempt_restores_what_the_last_synced_with_changes_and_deletions(
    progress_uri: str, tmp_path: Path
) -> None:
    store = open_store(progress_uri)
    with keeper(store, tmp_path / "pod1").folder(attempt("arc", 1)) as folder:
        write(folder.local, {"log.eval": "v1", "sub/part 1.json": "p1", ".buffer/seg.0": "s0", "gone": "x"})
        assert folder.sync()
        write(folder.local, {"log.eval": "v2 longer", "gone": None, "new[1]%.txt": "n"})
        assert folder.sync()
        expected = contents(folder.local)
    assert restored(store, tmp_path / "pod2", "arc", 2) == expected
    assert set(expected) == {"log.eval", "sub/part 1.json", ".buffer/seg.0", "new[1]%.txt"}


def test_names_with_odd_characters_round_trip_and_the_local_path_stays_plain(progress_uri: str, tmp_path: Path) -> None:
    store = open_store(progress_uri)
    name = "tasks/arc.py@m[1]*%41 " + "評価" * 60
    with keeper(store, tmp_path / "pod1").folder(attempt(name, 1)) as folder:
        relative = os.path.relpath(folder.local, tmp_path / "pod1")
        assert all(c.isascii() and (c.isalnum() or c in "._-/") for c in relative), relative
        write(folder.local, {"評価 [a]*.json": "1", "%2F.txt": "2"})
        folder.sync()
    with keeper(store, tmp_path / "pod2").folder(attempt(name, 2)) as folder:
        assert contents(folder.local) == {"評価 [a]*.json": "1", "%2F.txt": "2"}
        write(folder.local, {"new?.txt": "3"})
        folder.sync()  # the unchanged odd names are copied inside the store
    assert restored(store, tmp_path / "pod3", name, 3) == {"評価 [a]*.json": "1", "%2F.txt": "2", "new?.txt": "3"}


def test_a_sync_cut_off_at_any_point_leaves_a_folder_the_next_attempt_resumes_from(tmp_path: Path) -> None:
    """A tool keeps parts and a manifest naming them (as inspect's --log-shared buffer does). A sync
    of new parts, a rewritten manifest and a part dropped from it is cut off after every possible
    number of writes: the next attempt restores a folder whose manifest names only whole parts.
    """
    before = {"p0": "part 0", "p1": "part 1", "manifest.json": json.dumps(["p0", "p1"])}
    after = {"p2": "part 2", "p3": "part 3", "manifest.json": json.dumps(["p0", "p2", "p3"]), "p1": None}
    writes = None
    cut = 0
    while writes is None or cut <= writes:
        store = open_store(str(tmp_path / f"store{cut}" / "m.s.progress.txt"))
        with keeper(store, tmp_path / f"pod{cut}").folder(attempt("e", 1)) as folder:
            write(folder.local, before)
            folder.sync()
            write(folder.local, after)
            counting = Counting(store.backend, cut_after=cut)
            store.backend = counting
            try:
                folder.sync()
                writes = len([c for c in counting.calls if c in WRITES])
            except StoreError:
                pass
            store.backend = counting.inner
        found = restored(store, tmp_path / f"new{cut}", "e", 2)
        for part in json.loads(found["manifest.json"]):
            assert found.get(part) == f"part {part[1]}", (cut, found)
        cut += 1
    assert writes is not None
    assert writes >= 5  # p2, p3, the manifest, the deletion of p1, the marker


def test_a_first_sync_cut_off_leaves_the_older_attempt_as_the_one_restored(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    with keeper(store, tmp_path / "pod1").folder(attempt("e", 1)) as folder:
        write(folder.local, {"a": "1", "b": "2", "c": "3"})
        folder.sync()
    with keeper(store, tmp_path / "pod2").folder(attempt("e", 2)) as folder:
        write(folder.local, {"c": "3 and more"})
        store.backend = Counting(store.backend, cut_after=2)  # copies a and b, then the kill
        with pytest.raises(StoreError):
            folder.sync()
        store.backend = store.backend.inner
    assert restored(store, tmp_path / "pod3", "e", 3) == {"a": "1", "b": "2", "c": "3"}


def test_an_unchanged_folder_costs_nothing_and_a_sync_sends_only_what_changed(
    progress_uri: str, tmp_path: Path
) -> None:
    store = open_store(progress_uri)
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {f"f{i}": str(i) for i in range(40)})
        folder.sync()
        counting = Counting(store.backend)
        store.backend = counting
        assert not folder.sync()
        assert counting.calls == []
        write(folder.local, {"f7": "seven", "f8": None})
        assert folder.sync()
        assert sorted(counting.calls) == ["delete", "upload", "write"]  # the file, the deletion, the marker


def test_an_eval_that_never_writes_to_its_folder_costs_the_store_nothing(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    counting = Counting(store.backend)
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        store.backend = counting
        assert not folder.sync(force=True)  # even the last sync of a completion
        assert folder.stored_nothing
    assert counting.calls == []


def test_the_first_sync_of_a_new_attempt_copies_unchanged_files_inside_the_store(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    with keeper(store, tmp_path / "pod1").folder(attempt("e", 1)) as folder:
        write(folder.local, {f"f{i}": str(i) for i in range(5)})
        folder.sync()
    with keeper(store, tmp_path / "pod2").folder(attempt("e", 2)) as folder:
        counting = Counting(store.backend)
        store.backend = counting
        assert not folder.sync()  # nothing changed since the restore: attempt 1 stays the truth
        write(folder.local, {"f0": "changed"})
        folder.sync()
        assert sorted(counting.calls).count("copy") == 4
        assert counting.calls.count("upload") == 1
    names = store.backend.listdir(stored_folder(store, "e"))
    assert sorted(names) == ["2", "2.json"]  # attempt 1's folder went once attempt 2's was whole


def test_a_worker_that_lost_its_claim_never_overwrites_the_new_holders_state(progress_uri: str, tmp_path: Path) -> None:
    old_store, new_store = open_store(progress_uri), open_store(progress_uri)
    with keeper(old_store, tmp_path / "old").folder(attempt("e", 1)) as old:
        write(old.local, {"log": "sample 1"})
        old.sync()
        with keeper(new_store, tmp_path / "new").folder(attempt("e", 2)) as new:
            assert contents(new.local) == {"log": "sample 1"}
            write(new.local, {"log": "sample 1, sample 2 by the new holder"})
            new.sync()
            write(old.local, {"log": "stale: the old holder went on", "extra": "stale"})
            old.sync()  # a stalled worker that has not found out yet
            assert restored(new_store, tmp_path / "third", "e", 3) == {"log": "sample 1, sample 2 by the new holder"}


def test_a_fenced_worker_writes_no_state(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {"a": "1"})

        def fenced() -> None:
            raise FencedError("taken over")

        store.guard = fenced
        with pytest.raises(FencedError):
            folder.sync()
    assert store.backend.files(f"{store.location.sidecar}/state") == {}


def test_a_leftover_local_folder_is_kept_when_identical_and_replaced_otherwise(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    with keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as folder:
        write(folder.local, {"a": "1", "b": "2"})
        folder.sync()
    # The container restarts in the same pod (the emptyDir survives): nothing to download.
    counting = Counting(store.backend)
    store.backend = counting
    with keeper(store, tmp_path / "pod").folder(attempt("e", 2)) as folder:
        assert "download" not in counting.calls
        write(folder.local, {"b": "written after the last sync", "c": "3"})
    with keeper(store, tmp_path / "pod").folder(attempt("e", 3)) as folder:
        assert counting.calls.count("download") == 2
        assert contents(folder.local) == {"a": "1", "b": "2"}


def test_a_retry_failed_round_starts_empty_unless_keep_state(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    with keeper(store, tmp_path / "pod1").folder(attempt("e", 3, epoch=0)) as folder:
        write(folder.local, {"poison": "makes every attempt fail"})
        folder.sync()
    assert restored(store, tmp_path / "pod2", "e", 4, epoch=1) == {}
    assert restored(store, tmp_path / "pod3", "e", 5, epoch=1, keep_state=True) == {
        "poison": "makes every attempt fail"
    }


def test_results_whose_keeping_was_cut_off_are_read_from_state_and_kept_by_the_next_run(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    one = attempt("e", 1)
    with keeper(store, tmp_path / "pod").folder(one) as folder:
        write(folder.local, {"a": "1", "b": "2", "c": "3"})
        folder.sync(force=True)
    state = RunState()
    state.add(one.finished(Outcome.COMPLETED, exit_code=0))
    store.backend = Counting(store.backend, cut_after=1)
    with pytest.raises(StoreError):
        keep(store, "e", 1)
    store.backend = store.backend.inner
    found = source(store, state, "e", unfinished=False)
    assert found is not None
    assert found.folder == f"{stored_folder(store, 'e')}/1"
    assert keep_unkept(store, state, ("e", "other")) == ["e"]
    found = source(store, state, "e", unfinished=False)
    assert found is not None
    assert found.folder.endswith("/results/e")
    assert store.backend.files(found.folder) == {"a": 1, "b": 1, "c": 1}
    assert store.backend.files(f"{store.location.sidecar}/state") == {}


def test_a_large_file_round_trips_whole(progress_uri: str, tmp_path: Path) -> None:
    store = open_store(progress_uri)
    blob = os.urandom(1 << 16) * 96  # 6 MiB: above S3's smallest multipart part
    with keeper(store, tmp_path / "pod1").folder(attempt("e", 1)) as folder:
        Path(folder.local, "big.bin").write_bytes(blob)
        folder.sync()
    with keeper(store, tmp_path / "pod2").folder(attempt("e", 2)) as folder:
        assert Path(folder.local, "big.bin").read_bytes() == blob


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/abs", "a//b", ".", "a/./b"])
def test_a_stored_name_never_leads_outside_the_local_folder(name: str) -> None:
    assert local_path("/tmp/x", name) is None


def test_a_plain_stored_name_maps_below_the_local_folder() -> None:
    assert local_path("/tmp/x", ".buffer/seg 1") == "/tmp/x/.buffer/seg 1"


def test_two_processes_on_one_machine_never_share_a_local_folder(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    other = open_store(str(tmp_path / "store" / "m.s.progress.txt"))
    with (
        keeper(store, tmp_path / "pod").folder(attempt("e", 1)) as first,
        keeper(other, tmp_path / "pod").folder(attempt("e", 2)) as second,
    ):
        assert first.local != second.local
        assert isinstance(first, EvalFolder)
