"""The local disk as a progress-store backend: exclusive links for creates, a lock file plus
rename for replaces, fsync before anything counts as written.

Nothing is ever reached through a symbolic link: every path is walked from ``/`` one folder at
a time (``O_DIRECTORY | O_NOFOLLOW``) and every operation is done relative to the folder's file
descriptor, with ``O_NOFOLLOW`` on the final name. The location (batchrun/location.py) resolves
the user's own links above the progress file first, so any link met here was planted: it is a
StoreError naming it. Folders are created 0700 and files 0600.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from batchrun._backends import Blob, hash_tag, translated
from batchrun.errors import ConflictError, StoreError

_TMP_PREFIX = ".tmp-"
FOLDER_MODE = 0o700
FILE_MODE = 0o600
_PATH = getattr(os, "O_PATH", os.O_RDONLY)  # Linux: walk folders we may traverse but not list
_WALK = _PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # to fsync or list
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a planted FIFO can't hang us
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalBackend:
    """The local disk: exclusive links for creates, a lock file plus rename for replaces."""

    uri_prefix = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def read(self, path: str) -> Blob | None:
        folder, name = os.path.split(path)
        with translated(self, "read", path):
            try:
                with _folder(folder, create=False) as fd:
                    data = _read_at(fd, name, path)
            except FileNotFoundError:
                return None
        return Blob(data, hash_tag(data))

    def tag(self, path: str) -> str | None:
        blob = self.read(path)
        return None if blob is None else blob.tag

    def create(self, path: str, data: bytes, *, durable: bool) -> None:
        folder, name = os.path.split(path)
        with translated(self, "create", path), _folder(folder, create=True) as fd:
            tmp = _write_tmp(fd, data, durable=durable)
            try:
                os.link(tmp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                if _read_at(fd, name, path) != data:
                    msg = f"{path} already exists with other content"
                    raise ConflictError(msg) from None
            finally:
                os.unlink(tmp, dir_fd=fd)
            if durable:
                os.fsync(fd)

    def replace(self, path: str, data: bytes, expect: str | None) -> str:
        folder, name = os.path.split(path)
        with translated(self, "replace", path), _folder(folder, create=True) as fd, self._lock:
            lock = _open_at(fd, ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, path=folder)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    current: str | None = hash_tag(_read_at(fd, name, path))
                except FileNotFoundError:
                    current = None
                if current != expect:
                    msg = f"{path} changed since it was read"
                    raise ConflictError(msg)
                _replace_at(fd, name, data)
            finally:
                os.close(lock)
        return hash_tag(data)

    def write(self, path: str, data: bytes) -> None:
        folder, name = os.path.split(path)
        with translated(self, "write", path), _folder(folder, create=True) as fd:
            _replace_at(fd, name, data)

    def listdir(self, folder: str) -> list[str]:
        with translated(self, "list", folder):
            try:
                with _folder(folder, create=False, listable=True) as fd:
                    names = os.listdir(fd)
            except FileNotFoundError:
                return []
        return [name for name in names if not name.startswith(".")]

    def markers(self, folder: str) -> dict[str, str]:
        # Every write is a rename of a new file: the inode changes with each one.
        found: dict[str, str] = {}
        with translated(self, "list", folder):
            try:
                with _folder(folder, create=False, listable=True) as fd:
                    for name in os.listdir(fd):
                        if name.startswith("."):
                            continue
                        with contextlib.suppress(FileNotFoundError):
                            found[name] = _marker(os.stat(name, dir_fd=fd, follow_symlinks=False))
            except FileNotFoundError:
                return {}
        return found

    def delete(self, paths: list[str]) -> None:
        for path in paths:  # unlinking a planted link removes the link, never what it points to
            folder, name = os.path.split(path)
            with translated(self, "delete", path), contextlib.suppress(FileNotFoundError), _folder(folder) as fd:
                os.unlink(name, dir_fd=fd)

    def delete_tree(self, path: str) -> None:
        folder, name = os.path.split(path)
        with translated(self, "delete", path), contextlib.suppress(FileNotFoundError), _folder(folder) as fd:
            shutil.rmtree(name, dir_fd=fd)  # fd-based: never descends through a link

    def files(self, folder: str, tags: dict[str, str] | None = None) -> dict[str, int]:
        found: dict[str, int] = {}
        with translated(self, "list", folder):
            try:
                with _folder(folder, create=False, listable=True) as fd:
                    for parent, _, names, parent_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
                        for name in names:
                            with contextlib.suppress(FileNotFoundError):
                                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                                if stat.S_ISREG(st.st_mode) and not _is_tmp(name):
                                    relative = os.path.normpath(os.path.join(parent, name))
                                    found[relative] = st.st_size
                                    if tags is not None:
                                        tags[relative] = _marker(st)
            except FileNotFoundError:
                return {}
        return found

    def upload(self, local: str, path: str) -> None:
        folder, name = os.path.split(path)
        with translated(self, "upload", path), open(local, "rb") as source, _folder(folder, create=True) as fd:
            _replace_from(fd, name, source)

    def download(self, path: str, local: str) -> None:
        folder, name = os.path.split(path)
        with (
            translated(self, "download", path),
            _folder(folder) as fd,
            open(_open_at(fd, name, _READ, path=folder), "rb") as source,
            open(local, "wb") as target,
        ):
            shutil.copyfileobj(source, target)

    def copy(self, source: str, path: str, expect: str | None = None) -> None:
        src_folder, src_name = os.path.split(source)
        folder, name = os.path.split(path)
        with (
            translated(self, "copy", path),
            _folder(src_folder) as src_fd,
            open(_open_at(src_fd, src_name, _READ, path=src_folder), "rb") as data,
            _folder(folder, create=True) as fd,
        ):
            if expect is not None and _marker(os.fstat(data.fileno())) != expect:
                msg = f"{source} changed since it was listed"
                raise ConflictError(msg)
            _replace_from(fd, name, data)


def _marker(st: os.stat_result) -> str:
    """Every write is a rename of a new file: the inode changes with each one."""
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def _is_tmp(name: str) -> bool:
    return name.startswith(_TMP_PREFIX) and len(name) == len(_TMP_PREFIX) + 32


def _replace_from(fd: int, name: str, source: BinaryIO) -> None:
    """Replace *name* in folder *fd* atomically with what *source* holds, streamed and fsynced."""
    tmp = f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        with open(os.open(tmp, _NEW, FILE_MODE, dir_fd=fd), "wb") as target:
            shutil.copyfileobj(source, target)
            target.flush()
            os.fsync(target.fileno())
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        raise
    os.fsync(fd)


@contextlib.contextmanager
def _folder(folder: str, *, create: bool = False, listable: bool = False) -> Iterator[int]:
    """A file descriptor on *folder*, reached from ``/`` without following any link; missing
    folders are created (0700) if *create*, else FileNotFoundError.
    """
    parts = [part for part in os.path.abspath(folder).split(os.sep) if part]
    fd = os.open(os.sep, _WALK if parts else os.O_RDONLY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = _OPEN_DIR if last and (create or listable) else _WALK
            shown = os.sep + os.sep.join(parts[: i + 1])
            try:
                child = _open_at(fd, part, flags, path=shown, folder=True)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
                    os.mkdir(part, FOLDER_MODE, dir_fd=fd)
                child = _open_at(fd, part, flags, path=shown, folder=True)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _open_at(fd: int, name: str, flags: int, *, path: str, folder: bool = False) -> int:
    """``openat`` that names a planted link as such (ELOOP for a file, ENOTDIR for a folder)."""
    try:
        return os.open(name, flags, FILE_MODE, dir_fd=fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (folder and exc.errno == errno.ENOTDIR):
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    shown = path if folder else os.path.join(path, name)
                    msg = f"{shown} is a symbolic link; batchrun never follows links for its own files"
                    raise StoreError(msg) from None
        raise


def _read_at(fd: int, name: str, path: str) -> bytes:
    """The whole content of the regular file *name* in folder *fd*."""
    file_fd = _open_at(fd, name, _READ, path=os.path.dirname(path))
    with open(file_fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            msg = f"{path} is not a regular file"
            raise StoreError(msg)
        return fh.read()


def _write_tmp(fd: int, data: bytes, *, durable: bool) -> str:
    """A new temp file (0600, create-exclusive) in folder *fd* holding *data*; returns its name."""
    tmp = f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    with open(os.open(tmp, _NEW, FILE_MODE, dir_fd=fd), "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    return tmp


def _replace_at(fd: int, name: str, data: bytes) -> None:
    """Replace *name* in folder *fd* atomically and durably (a link there is replaced, not followed)."""
    tmp = _write_tmp(fd, data, durable=True)
    try:
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        os.unlink(tmp, dir_fd=fd)
        raise
    os.fsync(fd)
