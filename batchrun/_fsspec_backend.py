"""fsspec filesystems as progress-store backends: any fsspec URL (memory:// in tests, gs://), and
S3 through s3fs with conditional writes.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from typing import TYPE_CHECKING

from batchrun._backends import Backend, Blob, hash_tag, translated
from batchrun.errors import ConflictError, StoreError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


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
        with translated(self, "read", path):
            try:
                data = bytes(self.fs.cat_file(path))
            except FileNotFoundError:
                return None
        return Blob(data, hash_tag(data))

    def tag(self, path: str) -> str | None:
        blob = self.read(path)
        return None if blob is None else blob.tag

    def create(self, path: str, data: bytes, *, durable: bool) -> None:  # noqa: ARG002 - a PUT is durable
        with translated(self, "create", path):
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
        return hash_tag(data)

    def write(self, path: str, data: bytes) -> None:
        with translated(self, "write", path):
            try:
                self.fs.pipe_file(path, data)
            except FileNotFoundError as exc:
                raise _no_bucket(self, path) from exc

    def listdir(self, folder: str) -> list[str]:
        with translated(self, "list", folder):
            try:
                entries = self.fs.ls(folder, detail=False, refresh=True)  # never a cached listing
            except FileNotFoundError:
                return []
        names = (str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries)
        return [name for name in names if name and not name.startswith(".")]

    def delete(self, paths: list[str]) -> None:
        if not paths:
            return
        with translated(self, "delete", paths[0]):
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)

    def delete_tree(self, path: str) -> None:
        with translated(self, "delete", path), contextlib.suppress(FileNotFoundError):
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

        with translated(self, "read", path):
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
        with translated(self, "stat", path):
            try:
                return str(self.fs.info(path)["ETag"])
            except FileNotFoundError:
                return None

    def replace(self, path: str, data: bytes, expect: str | None) -> str:
        with translated(self, "replace", path):
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
            with translated(self, "delete", paths[0]):
                self.fs.rm(paths)  # one DeleteObjects request per 1,000 keys


def _no_bucket(backend: Backend, path: str) -> StoreError:
    bucket = path.split("/", 1)[0]
    return StoreError(f"bucket {bucket!r} does not exist or is not writable ({backend.uri_prefix}{path})")
