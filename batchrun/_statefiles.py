"""The local side of an eval's state folder: its name, what is in it, and in which order a sync
sends what changed.

The order rule. A sync sends new files first, then changed files, each group least recently
modified first, and deletes stored files that are gone locally last. A tool that writes parts
and then a manifest naming them (inspect's ``--log-shared`` buffer: new segment files, then its
``manifest.json`` rewritten) has its manifest modified after the parts, so it is sent after them:
every manifest stored names parts already stored, and a part it no longer names is deleted only
after it. Each file is replaced whole (an S3 PUT, a rename on disk), so a sync killed at any
point leaves every stored file whole and the folder as it was after some prefix of this order.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass

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
    """Every regular file under *root* (links and special files are skipped), by its
    '/'-separated path relative to *root*.
    """
    found: dict[str, Stat] = {}
    for parent, folders, names in os.walk(root):
        folders[:] = [f for f in folders if not os.path.islink(os.path.join(parent, f))]
        for name in names:
            path = os.path.join(parent, name)
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    found[os.path.relpath(path, root).replace(os.sep, "/")] = (info.st_size, info.st_mtime_ns)
    return found


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


@contextlib.contextmanager
def locked_folder(path: str, fallback: str) -> Iterator[str]:
    """*path*, held with a lock file beside it while the attempt runs; *fallback* when another
    process of this machine holds it (a worker whose place was taken may still be stopping).
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield fallback
        else:
            yield path
    finally:
        os.close(fd)
