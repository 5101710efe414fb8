"""The local disk as a progress-store backend: exclusive links for creates, a lock file plus
rename for replaces, fsync before anything counts as written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import uuid
from pathlib import Path

from batchrun._backends import Blob, hash_tag, translated
from batchrun.errors import ConflictError

_TMP_PREFIX = ".tmp-"


class LocalBackend:
    """The local disk: exclusive links for creates, a lock file plus rename for replaces."""

    uri_prefix = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def read(self, path: str) -> Blob | None:
        with translated(self, "read", path):
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                return None
        return Blob(data, hash_tag(data))

    def tag(self, path: str) -> str | None:
        blob = self.read(path)
        return None if blob is None else blob.tag

    def create(self, path: str, data: bytes, *, durable: bool) -> None:
        with translated(self, "create", path):
            tmp = self._write_tmp(path, data, durable=durable)
            try:
                os.link(tmp, path)
            except FileExistsError:
                if Path(path).read_bytes() != data:
                    msg = f"{path} already exists with other content"
                    raise ConflictError(msg) from None
            finally:
                os.unlink(tmp)
            if durable:
                _fsync_dir(os.path.dirname(path))

    def replace(self, path: str, data: bytes, expect: str | None) -> str:
        with translated(self, "replace", path):
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            with self._lock, open(os.path.join(folder, ".lock"), "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self.read(path)
                if (None if current is None else current.tag) != expect:
                    msg = f"{path} changed since it was read"
                    raise ConflictError(msg)
                self._replace(path, data)
        return hash_tag(data)

    def write(self, path: str, data: bytes) -> None:
        with translated(self, "write", path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._replace(path, data)

    def listdir(self, folder: str) -> list[str]:
        with translated(self, "list", folder):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return []
        return [name for name in names if not name.startswith(".")]

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            with translated(self, "delete", path), contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def delete_tree(self, path: str) -> None:
        with translated(self, "delete", path), contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)

    def _write_tmp(self, path: str, data: bytes, *, durable: bool) -> str:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        with open(tmp, "xb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        return tmp

    def _replace(self, path: str, data: bytes) -> None:
        tmp = self._write_tmp(path, data, durable=True)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        _fsync_dir(os.path.dirname(path))


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
