"""Another local user can't steer batchrun through the file system: the default progress folder
is the user's own (0700, checked), and the local store never follows a symbolic link for its own
files (P, P.d and everything under it), so planted links neither redirect writes nor leak reads.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from helpers import batchrun

from batchrun import StoreError
from batchrun._local_backend import LocalBackend

SET = "s:\n  evals: [a, b]\n"
COMMAND = f"{sys.executable} -c print(42) {{eval}}"  # prints, so each attempt's output is saved
PRIVATE_TEXT = "root-only-line-1\nroot-only-line-2\n"


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose default progress folder is under *tmp_path* (TMPDIR), not the real /tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHRUN_", "XDG_"))}
    return {**env, "TMPDIR": str(tmp_path), "BATCHRUN_COMMAND": COMMAND, **extra}


def run(tmp_path: Path, *args: str, **extra: str) -> tuple[int, list[str]]:
    """`batchrun run m set.yaml ARGS` in *tmp_path*: its exit code and its stderr lines."""
    (tmp_path / "set.yaml").write_text(SET)
    result = batchrun("run", "m", "set.yaml", *args, env=env_for(tmp_path, **extra), cwd=tmp_path)
    return result.returncode, result.stderr.strip().splitlines()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path) -> dict[str, bytes | str]:
    """Everything under *root*: file contents, link targets, folders."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        found[name] = str(path.readlink()) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return found


def assert_one_error(code: int, lines: list[str], expected_code: int, text: str) -> None:
    assert code == expected_code, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("batchrun: error: "), lines
    assert text in lines[0], lines


def test_default_folder_is_per_user_and_private(tmp_path: Path) -> None:
    """Without --progress, progress goes to $TMPDIR/batchrun-UID/ (0700), files 0600, folders 0700."""
    code, lines = run(tmp_path)
    assert code == 0, lines
    folder = tmp_path / f"batchrun-{os.geteuid()}"
    progress = folder / "m.s.progress.txt"
    assert progress.read_text().splitlines() == ["a", "b"]
    assert mode(folder) == 0o700
    sidecar = Path(f"{progress}.d")
    stored = [progress, *sidecar.rglob("*")]
    assert {p.name for p in stored} >= {"run.json", "snapshot.json", "events", "logs", "1.log"}
    for path in stored:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert mode(sidecar) == 0o700


def test_xdg_state_home_is_the_default_when_set(tmp_path: Path) -> None:
    """With XDG_STATE_HOME set, progress goes to $XDG_STATE_HOME/batchrun/, created 0700."""
    state = tmp_path / "state"
    code, lines = run(tmp_path, XDG_STATE_HOME=str(state))
    assert code == 0, lines
    assert (state / "batchrun" / "m.s.progress.txt").read_text().splitlines() == ["a", "b"]
    assert mode(state / "batchrun") == 0o700
    assert not (tmp_path / f"batchrun-{os.geteuid()}").exists()


def test_default_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    """A link planted at the default folder's name is refused (exit 2) and nothing is written through it."""
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / f"batchrun-{os.geteuid()}").symlink_to(elsewhere)
    code, lines = run(tmp_path)
    assert_one_error(code, lines, 2, "is a symbolic link; give --progress")
    assert tree(elsewhere) == {}


def test_group_writable_default_folder_is_refused(tmp_path: Path) -> None:
    """A default folder others may write in (where they could plant links) is refused, untouched."""
    folder = tmp_path / f"batchrun-{os.geteuid()}"
    folder.mkdir()
    folder.chmod(0o770)
    code, lines = run(tmp_path)
    assert_one_error(code, lines, 2, "is writable by group or others (mode 0770)")
    assert tree(folder) == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_default_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A default folder another user created first (0700, so it looks private) is refused, untouched."""
    folder = tmp_path / f"batchrun-{os.geteuid()}"
    folder.mkdir(mode=0o700)
    os.chown(folder, 12345, 12345)
    code, lines = run(tmp_path)
    assert_one_error(code, lines, 2, "belongs to uid 12345, not to you")
    assert tree(folder) == {}


def test_planted_lock_link_creates_nothing_through_it(tmp_path: Path) -> None:
    """A link at P.d/.lock is not followed: no file appears at its target, the run stops with exit 3 naming it."""
    sidecar = tmp_path / "shared" / "m.s.progress.txt.d"
    sidecar.mkdir(parents=True)
    target = tmp_path / "etc" / "made-by-batchrun"
    target.parent.mkdir()
    (sidecar / ".lock").symlink_to(target)
    code, lines = run(tmp_path, "--progress", "shared/")
    assert_one_error(code, lines, 3, f"{sidecar}/.lock is a symbolic link")
    assert not target.exists()
    assert tree(sidecar) == {".lock": str(target)}


def test_progress_file_linked_to_a_secret_is_refused(tmp_path: Path) -> None:
    """P as a link to a secret file is refused (exit 2): its lines are not imported, nothing is written."""
    secret = tmp_path / "secret"
    secret.write_text(PRIVATE_TEXT)
    secret.chmod(0o600)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "m.s.progress.txt").symlink_to(secret)
    code, lines = run(tmp_path, "--progress", "shared/")
    assert_one_error(code, lines, 2, "progress file")
    assert "is a symbolic link" in lines[0]
    assert secret.read_text() == PRIVATE_TEXT
    assert tree(shared) == {"m.s.progress.txt": str(secret)}


def test_sidecar_link_is_refused(tmp_path: Path) -> None:
    """P.d as a link to another folder is refused (exit 2) before anything is written there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "m.s.progress.txt.d").symlink_to(elsewhere)
    code, lines = run(tmp_path, "--progress", "shared/")
    assert_one_error(code, lines, 2, "progress folder")
    assert tree(elsewhere) == {}


@pytest.mark.parametrize("name", ["run.json", "events"])
def test_link_inside_the_sidecar_is_a_store_error(tmp_path: Path, name: str) -> None:
    """A link to a file or folder found under P.d ends the run with exit 3 naming it, and is not followed."""
    sidecar = tmp_path / "shared" / "m.s.progress.txt.d"
    sidecar.mkdir(parents=True)
    target = tmp_path / "target"
    if name == "events":
        target.mkdir()
    else:
        target.write_text(PRIVATE_TEXT)
    (sidecar / name).symlink_to(target)
    code, lines = run(tmp_path, "--progress", "shared/")
    assert_one_error(code, lines, 3, f"{sidecar}/{name} is a symbolic link")
    assert (tree(target) == {}) if name == "events" else (target.read_text() == PRIVATE_TEXT)


def test_links_in_the_users_own_path_above_the_progress_file_are_followed(tmp_path: Path) -> None:
    """--progress through a linked folder of the user's own works: only P and P.d must not be links."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    code, lines = run(tmp_path, "--progress", "link/runs/")
    assert code == 0, lines
    assert (real / "runs" / "m.s.progress.txt").read_text().splitlines() == ["a", "b"]


def test_a_fifo_where_a_store_file_should_be_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """Reading a store file that is a FIFO fails at once with StoreError (it would block forever)."""
    fifo = tmp_path / "snapshot.json"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="is not a regular file"):
        LocalBackend().read(str(fifo))
