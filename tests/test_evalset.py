"""Eval sets: the file formats, registry folders, order and duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun import EvalSetError, load_eval_set


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_openai_evals_format_takes_the_set_name_from_its_key(tmp_path: Path) -> None:
    """`<set>: {evals: [...]}` gives the set's name and its evals in order, duplicates dropped."""
    ref = write(tmp_path / "sets.yaml", "test-basic:\n  evals: [test-match, test-fuzzy-match, test-match]\n")
    loaded = load_eval_set(ref)
    assert (loaded.name, loaded.evals) == ("test-basic", ("test-match", "test-fuzzy-match"))


def test_file_hash_set_picks_one_of_several(tmp_path: Path) -> None:
    """FILE#SET chooses a set from a file that holds several."""
    ref = write(tmp_path / "sets.yml", "a: {evals: [x]}\nb: {evals: [y, z]}\n")
    assert load_eval_set(f"{ref}#b").evals == ("y", "z")


def test_yaml_list_and_plain_text_are_named_after_the_file(tmp_path: Path) -> None:
    """A YAML list and a text file (with # comments) take the file's stem as the set name."""
    listed = load_eval_set(write(tmp_path / "mine.yaml", "- one\n- two\n"))
    text = load_eval_set(write(tmp_path / "other.txt", "# header\none\n\n  two  # why\none\n"))
    assert (listed.name, listed.evals) == ("mine", ("one", "two"))
    assert (text.name, text.evals) == ("other", ("one", "two"))


def test_eval_names_with_paths_and_at_signs_are_kept(tmp_path: Path) -> None:
    """Names like inspect's `file.py@task` or `a/../b` are eval names like any other."""
    loaded = load_eval_set(write(tmp_path / "s.txt", "tasks/arc.py@arc_easy\na/../b\n"))
    assert loaded.evals == ("tasks/arc.py@arc_easy", "a/../b")


def test_set_names_are_found_in_registry_folders(tmp_path: Path) -> None:
    """A bare set name is looked up in eval_sets/*.yaml below each --registry-path."""
    write(tmp_path / "reg1" / "eval_sets" / "x.yaml", "other: {evals: [o]}\n")
    write(tmp_path / "reg2" / "eval_sets" / "y.yaml", "wanted: {evals: [w1, w2]}\n")
    loaded = load_eval_set("wanted", [str(tmp_path / "reg1"), str(tmp_path / "reg2")])
    assert (loaded.name, loaded.evals) == ("wanted", ("w1", "w2"))


def test_eval_set_files_load_from_fsspec_urls() -> None:
    """An eval-set file can live at any fsspec URL (memory:// here, s3:// in a cluster)."""
    import fsspec

    with fsspec.open("memory://sets/remote.yaml", "w") as fh:
        fh.write("remote: {evals: [r]}\n")
    assert load_eval_set("memory://sets/remote.yaml").evals == ("r",)


def test_set_without_evals_list_is_an_error(tmp_path: Path) -> None:
    """A set whose body has no 'evals' list is refused with the file named."""
    ref = write(tmp_path / "s.yaml", "s: {tasks: [a]}\n")
    with pytest.raises(EvalSetError, match=r"set 's' needs an 'evals' list"):
        load_eval_set(ref)


def test_openai_evals_registry_resolves_patterns_like_oaievalset() -> None:
    """With openai/evals installed, a set name resolves through its registry to full eval keys."""
    pytest.importorskip("evals", reason="openai/evals is not installed")
    loaded = load_eval_set("test-basic")
    assert loaded.name == "test-basic"
    assert loaded.evals
    assert all("." in name for name in loaded.evals)  # keys like test-match.s1.simple-v0
