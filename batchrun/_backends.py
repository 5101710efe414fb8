"""Storage primitives for the progress store, one class per kind of filesystem.

Every backend offers the same few operations on whole objects: read with a version tag,
create-only write, conditional replace, unconditional atomic write, list, delete. This is the
only module that touches the filesystem libraries; their errors become StoreError here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batchrun.errors import ConflictError, StoreError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True, slots=True)
class Blob:
    """An object's bytes and the tag a conditional replace must name."""

    data: bytes
    tag: str


class Backend(Protocol):
    """Whole-object operations; paths are absolute within the backend's filesystem."""

    uri_prefix: str

    def read(self, path: str) -> Blob | None:
        """The object's content and tag, or None if it does not exist."""

    def tag(self, path: str) -> str | None:
        """The object's current tag (cheaper than read where the store allows), or None."""

    def create(self, path: str, data: bytes, *, durable: bool) -> None:
        """Write *path* only if it does not exist; a retried write of the same bytes is success."""

    def replace(self, path: str, data: bytes, expect: str | None) -> str:
        """Write *path* if its tag is still *expect* (None: must not exist); return the new tag."""

    def write(self, path: str, data: bytes) -> None:
        """Replace *path* whole and atomically, unconditionally."""

    def listdir(self, folder: str) -> list[str]:
        """Names (not paths) of the objects directly in *folder*; [] if there is none."""

    def delete(self, paths: list[str]) -> None:
        """Delete objects; missing ones are fine."""

    def delete_tree(self, path: str) -> None:
        """Delete *path* and everything under *path*, if any."""


def _hash_tag(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


@contextlib.contextmanager
def _translated(backend: Backend, op: str, path: str) -> Iterator[None]:
    """Turn filesystem and client errors into StoreError naming the operation and object."""
    try:
        yield
    except (StoreError, FileExistsError):
        raise
    except PermissionError as exc:
        msg = f"access denied to {backend.uri_prefix}{path} ({op}): {_reason(exc)}"
        raise StoreError(msg) from exc
    except Exception as exc:
        msg = f"progress store: cannot {op} {backend.uri_prefix}{path}: {_reason(exc)}"
        raise StoreError(msg) from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class LocalBackend:
    """The local disk: exclusive links for creates, a lock file plus rename for replaces."""

    uri_prefix = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def read(self, path: str) -> Blob | None:
        with _translated(self, "read", path):
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                return None
        return Blob(data, _hash_tag(data))

    def tag(self, path: str) -> str | None:
        blob = self.read(path)
        return None if blob is None else blob.tag

    def create(self, path: str, data: bytes, *, durable: bool) -> None:
        with _translated(self, "create", path):
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
        with _translated(self, "replace", path):
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            with self._lock, open(os.path.join(folder, ".lock"), "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self.read(path)
                if (None if current is None else current.tag) != expect:
                    msg = f"{path} changed since it was read"
                    raise ConflictError(msg)
                self._replace(path, data)
        return _hash_tag(data)

    def write(self, path: str, data: bytes) -> None:
        with _translated(self, "write", path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._replace(path, data)

    def listdir(self, folder: str) -> list[str]:
        with _translated(self, "list", folder):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return []
        return [name for name in names if not name.startswith(".")]

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            with _translated(self, "delete", path), contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def delete_tree(self, path: str) -> None:
        with _translated(self, "delete", path), contextlib.suppress(FileNotFoundError):
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


class FsspecBackend:
    """Any fsspec filesystem (memory:// in tests, gs:// and others): create-only where the
    filesystem supports it; replaces are checked against the content under an in-process lock,
    which is exact for memory:// and best effort elsewhere.
    """

    def __init__(self, fs: AbstractFileSystem, uri_prefix: str) -> None:
        self.fs = fs
        self.uri_prefix = uri_prefix
        self._lock = threading.Lock()

    def read(self, path: str) -> Blob | None:
        with _translated(self, "read", path):
            try:
                data = bytes(self.fs.cat_file(path))
            except FileNotFoundError:
                return None
        return Blob(data, _hash_tag(data))

    def tag(self, path: str) -> str | None:
        blob = self.read(path)
        return None if blob is None else blob.tag

    def create(self, path: str, data: bytes, *, durable: bool) -> None:  # noqa: ARG002 - a PUT is durable
        with _translated(self, "create", path):
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                self._check_own_write(path, data)
            except FileNotFoundError as exc:  # a missing bucket, on object stores
                raise _no_bucket(self, path) from exc

    def replace(self, path: str, data: bytes, expect: str | None) -> str:
        with self._lock:
            current = self.read(path)
            if (None if current is None else current.tag) != expect:
                msg = f"{path} changed since it was read"
                raise ConflictError(msg)
            self.write(path, data)
        return _hash_tag(data)

    def write(self, path: str, data: bytes) -> None:
        with _translated(self, "write", path):
            try:
                self.fs.pipe_file(path, data)
            except FileNotFoundError as exc:
                raise _no_bucket(self, path) from exc

    def listdir(self, folder: str) -> list[str]:
        with _translated(self, "list", folder):
            try:
                entries = self.fs.ls(folder, detail=False, refresh=True)  # never a cached listing
            except FileNotFoundError:
                return []
        names = (str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries)
        return [name for name in names if name and not name.startswith(".")]

    def delete(self, paths: list[str]) -> None:
        if not paths:
            return
        with _translated(self, "delete", paths[0]):
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)

    def delete_tree(self, path: str) -> None:
        with _translated(self, "delete", path), contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def _check_own_write(self, path: str, data: bytes) -> None:
        """A create that answers 'exists' may be our own retried write: compare, don't assume."""
        existing = self.read(path)
        if existing is None or existing.data != data:
            msg = f"{path} already exists with other content"
            raise ConflictError(msg)


class S3Backend(FsspecBackend):
    """S3 through s3fs: If-None-Match creates, If-Match replaces on the ETag, no listing cache."""

    def read(self, path: str) -> Blob | None:
        from fsspec.asyn import sync  # noqa: PLC0415

        with _translated(self, "read", path):
            try:
                data, etag = sync(self.fs.loop, self._get, path)
            except FileNotFoundError:
                return None
        return Blob(data, etag)

    async def _get(self, path: str) -> tuple[bytes, str]:
        # One GET that returns the body and its ETag together (s3fs's cat_file would HEAD first).
        bucket, key, _ = self.fs.split_path(path)
        resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)  # noqa: SLF001
        try:
            data = await resp["Body"].read()
        finally:
            resp["Body"].close()
        return bytes(data), str(resp["ETag"])

    def tag(self, path: str) -> str | None:
        with _translated(self, "stat", path):
            try:
                return str(self.fs.info(path)["ETag"])
            except FileNotFoundError:
                return None

    def replace(self, path: str, data: bytes, expect: str | None) -> str:
        with _translated(self, "replace", path):
            try:
                if expect is None:
                    out = self.fs.pipe_file(path, data, mode="create")
                else:
                    out = self.fs.pipe_file(path, data, IfMatch=expect)
            except FileNotFoundError as exc:
                if expect is None:
                    raise _no_bucket(self, path) from exc
                raise ConflictError(f"{path} was deleted since it was read") from exc
            except OSError as exc:  # 412 Precondition Failed: FileExistsError, or errno EINVAL
                if not isinstance(exc, FileExistsError) and exc.errno != errno.EINVAL:
                    raise
                # Lost reply + retry looks like a conflict: our bytes may be what is stored.
                current = self.read(path)
                if current is not None and current.data == data:
                    return current.tag
                raise ConflictError(f"{path} changed since it was read") from exc
        return str(out["ETag"])

    def delete(self, paths: list[str]) -> None:
        if paths:
            with _translated(self, "delete", paths[0]):
                self.fs.rm(paths)  # one DeleteObjects request per 1,000 keys


def _no_bucket(backend: Backend, path: str) -> StoreError:
    bucket = path.split("/", 1)[0]
    return StoreError(f"bucket {bucket!r} does not exist or is not writable ({backend.uri_prefix}{path})")


# botocore's standard retry mode with a bounded total: a store that stays unreachable
# fails within about half a minute (exit 3) instead of hanging the Job.
_S3_DEFAULTS: Mapping[str, Any] = {
    "config_kwargs": {
        "retries": {"mode": "standard", "total_max_attempts": 5},
        "connect_timeout": 5,
        "read_timeout": 30,
    },
}


def open_backend(protocol: str, storage_options: Mapping[str, Any]) -> Backend:
    """The backend for *protocol* ("" or "file" is the local disk)."""
    if protocol in ("", "file", "local"):
        return LocalBackend()
    import fsspec  # noqa: PLC0415 - local runs never import fsspec

    options = dict(storage_options)
    if protocol in ("s3", "s3a"):
        config = {**_S3_DEFAULTS["config_kwargs"], **options.pop("config_kwargs", {})}
        options.update(skip_instance_cache=True, use_listings_cache=False, config_kwargs=config)
    try:
        fs = fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError, TypeError) as exc:
        raise StoreError(f"cannot open {protocol}:// filesystem: {_reason(exc)}") from exc
    if protocol in ("s3", "s3a"):
        return S3Backend(fs, f"{protocol}://")
    return FsspecBackend(fs, f"{protocol}://")
