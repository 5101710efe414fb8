"""The local side of an eval's state folder: its name, what is in it, and in which order a sync
sends what changed.

The order rule (:meth:`batchrun._statesync.FolderSync.sync` carries it out). A sync sends new files
first, least recently modified first; then it copies the changed files aside as they are at that
moment, sends every file that appeared or changed since, then the copies; it deletes stored files
that are gone locally last. A tool that writes parts and then a manifest naming them (inspect's
``--log-shared`` buffer: new segment files, then its ``manifest.json`` rewritten) thus never has
a manifest stored that names a part not stored, even while it writes during the sync, and a part
the manifest no longer names is deleted only after it. Each file is replaced whole (an S3 PUT, a
rename on disk), so a sync killed at any point leaves every stored file whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from batchrun.errors import StoreError

Stat = tuple[int, int]  # size, mtime_ns: a file whose pair changed is sent again

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_READABLE = 40


def slug(text: str) -> str:
    """A name for *text* made of ``[A-Za-z0-9._-]`` only: a readable start plus a short hash of
    the whole (never ``%``, which inspect decodes in paths, never the raw name).
    """
    readable = _UNSAFE.sub("_", text).strip("._-")[:_READABLE].rstrip("._-") or "x"
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def scan(root: str) -> dict[str, Stat]:
    """Every regular file under *root* (links and special files are skipped, and names that are
    not UTF-8, which no object store can hold), by its '/'-separated path relative to *root*.
    """
    found: dict[str, Stat] = {}
    for parent, folders, names in os.walk(root):
        folders[:] = [f for f in folders if not os.path.islink(os.path.join(parent, f))]
        for name in names:
            path = os.path.join(parent, name)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if not _encodable(relative):
                continue
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    found[relative] = (info.st_size, info.st_mtime_ns)
    return found


def _encodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by os.walk as surrogates
        return False
    return True


def clashing(gone: Iterable[str], new: Iterable[str]) -> list[str]:
    """The *gone* names whose path clashes with a *new* one (a file replaced by a folder of the
    same name, or the reverse): they must be deleted before the new ones are sent.
    """
    new = set(new)
    parents = {name.rsplit("/", depth)[0] for name in new for depth in range(1, name.count("/") + 1)}
    return sorted(g for g in gone if g in parents or any(p in new for p in _parents(g)))


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What one sync sends, in order, and what it then deletes."""

    new: tuple[str, ...]
    changed: tuple[str, ...]
    gone: tuple[str, ...]

    def __bool__(self) -> bool:
        """Whether there is anything to do."""
        return bool(self.new or self.changed or self.gone)


def plan_sync(current: dict[str, Stat], synced: dict[str, Stat]) -> SyncPlan:
    """The sync that makes the stored copy (last sent as *synced*) match *current* (module docstring)."""

    def oldest_first(names: list[str]) -> tuple[str, ...]:
        return tuple(sorted(names, key=lambda name: (current[name][1], name)))

    new = oldest_first([name for name in current if name not in synced])
    changed = oldest_first([name for name in current if name in synced and current[name] != synced[name]])
    gone = tuple(sorted(name for name in synced if name not in current))
    return SyncPlan(new, changed, gone)


def local_path(root: str, name: str) -> str | None:
    """Where the stored file *name* goes below *root*; None for a name that would leave *root*
    (an absolute path, ``..``, an empty part): a store is data, never trusted with paths.
    """
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\0" in name:
        return None
    return os.path.join(root, *parts)


def empty_folder(path: str) -> None:
    """Make *path* an empty folder (0700), deleting what it held."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path)
    os.makedirs(path, mode=0o700, exist_ok=True)


def remove(path: str) -> None:
    """Delete a local folder or file, if there."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def private_folder(path: str) -> None:
    """Create *path* (0700) if missing, and refuse one that is a link or not the user's own."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        msg = f"{path} is a symbolic link, not a folder, or not yours; batchrun keeps state only in its own folders"
        raise StoreError(msg)


@contextlib.contextmanager
def locked_folder(path: str, fallback: str) -> Iterator[tuple[str, bool]]:
    """*path*, held with a lock file beside it while the attempt runs, and False; *fallback*
    and True when another process of this machine holds it (a worker whose place was taken may
    still be stopping).
    """
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield fallback, True
        else:
            yield path, False
    finally:
        os.close(fd)


def read_record(path: str) -> dict[str, object]:
    """The record of what a local folder held when it last matched the store ({} if none)."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(path: str, record: dict[str, object]) -> bool:
    """Replace the record at *path* (never through a link); False, with no record left, when
    the disk refuses (the record only spares a download).
    """
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)
    except OSError:
        remove(tmp)
        remove(path)
        return False
    return True


def snapshot(path: str, folder: str) -> str | None:
    """A private copy of the file *path* as it is now, in *folder*; None if it is gone."""
    target = os.path.join(folder, uuid.uuid4().hex)
    try:
        with (
            open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as source,
            open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as copy,
        ):
            shutil.copyfileobj(source, copy)
    except FileNotFoundError:
        return None
    return target
