"""fsspec filesystems as progress-store backends: any fsspec URL (memory:// in tests, gs://), and
S3 through s3fs with conditional writes.

Keys are always literal: fsspec's ``rm``, ``cat`` and ``expand_path`` treat ``[``, ``*`` and ``?``
as glob patterns, so a run named ``m[1]`` could delete ``m1``'s objects. Deletes and listings here
name exact keys (S3: DeleteObjects and ListObjectsV2 with a prefix), never patterns.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from batchrun._backends import Backend, Blob, TruncatedReplyError, hash_tag, retrying, translated
from batchrun.errors import ConflictError, StoreError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

T = TypeVar("T")

_DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys
_CHUNK = 8 << 20  # multipart part size of state uploads (S3's smallest part is 5 MiB)


class FsspecBackend:
    """Any fsspec filesystem (memory:// in tests, gs:// and others): create-only where the
    filesystem supports it; replaces are checked against the content under an in-process lock,
    which is exact for memory:// and best effort elsewhere.
    """

    _upload_options: ClassVar[dict[str, Any]] = {}  # passed on to fs.put_file

    def __init__(self, fs: AbstractFileSystem, uri_prefix: str) -> None:
        self.fs = fs
        self.uri_prefix = uri_prefix
        self._lock = threading.Lock()

    def read(self, path: str) -> Blob | None:
        with translated(self, "read", path):
            try:
                data = bytes(retrying(self, "read", path, lambda: self.fs.cat_file(path)))
            except FileNotFoundError:
                return None
        return Blob(data, hash_tag(data))

    def tag(self, path: str) -> str | None:
        blob = self.read(path)
        return None if blob is None else blob.tag

    def create(self, path: str, data: bytes, *, durable: bool) -> None:  # noqa: ARG002 - a PUT is durable
        with translated(self, "create", path):
            try:
                retrying(self, "create", path, lambda: self.fs.pipe_file(path, data, mode="create"))
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
                retrying(self, "write", path, lambda: self.fs.pipe_file(path, data))
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

    def markers(self, folder: str) -> dict[str, str]:
        # Generic filesystems differ in what a listing tells (etag, generation, mtime): the content
        # hash is exact everywhere, at one read per object (worker folders are small).
        found: dict[str, str] = {}
        for name in self.listdir(folder):
            blob = self.read(f"{folder}/{name}")
            if blob is not None:
                found[name] = blob.tag
        return found

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            with translated(self, "delete", path), contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)  # one literal path; rm() would expand glob characters

    def delete_tree(self, path: str) -> None:
        with translated(self, "delete", path):
            try:
                found = self.fs.find(path, withdirs=True, detail=True)  # a walk by listings: literal
            except FileNotFoundError:
                return
            entries = sorted(found.items(), key=lambda item: item[0].count("/"), reverse=True)
            for name, info in entries:
                if info.get("type") == "directory":
                    with contextlib.suppress(OSError):  # object stores' folders are only prefixes
                        self.fs.rmdir(name)
                else:
                    with contextlib.suppress(FileNotFoundError):  # a failure to delete is a StoreError
                        self.fs.rm_file(name)
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.rmdir(path)

    def files(self, folder: str, tags: dict[str, str] | None = None) -> dict[str, int]:  # noqa: ARG002 - no tags here
        root = self.fs._strip_protocol(folder).rstrip("/") + "/"  # noqa: SLF001 - fsspec's own path form
        with translated(self, "list", folder):
            try:
                found = self.fs.find(folder, detail=True)  # a walk by listings: literal
            except FileNotFoundError:
                return {}
        return {
            name[len(root) :]: int(info.get("size") or 0)
            for name, info in found.items()
            if name.startswith(root) and info.get("type") != "directory"
        }

    def upload(self, local: str, path: str) -> None:
        with translated(self, "upload", path):
            try:
                retrying(self, "upload", path, lambda: self.fs.put_file(local, path, **self._upload_options))
            except FileNotFoundError as exc:
                raise _no_bucket(self, path) from exc

    def download(self, path: str, local: str) -> None:
        with translated(self, "download", path):
            retrying(self, "download", path, lambda: self.fs.get_file(path, local))

    def copy(self, source: str, path: str, expect: str | None = None) -> None:
        if expect is not None:  # generic listings give no tags to expect
            msg = f"{source}: a conditional copy needs a tag from files()"
            raise ConflictError(msg)
        with translated(self, "copy", path):
            retrying(self, "copy", path, lambda: self.fs.cp_file(source, path))

    def _check_own_write(self, path: str, data: bytes) -> None:
        """A create that answers 'exists' may be our own retried write: compare, don't assume.
        Gone again by now, it was written and then deleted: create-only objects here are deleted
        only after being folded (events) or by a reset, so our write landed (a lost reply).
        """
        existing = self.read(path)
        if existing is not None and existing.data != data:
            msg = f"{path} already exists with other content"
            raise ConflictError(msg)


class S3Backend(FsspecBackend):
    """S3 through s3fs: If-None-Match creates, If-Match replaces on the ETag, exact-key listings
    and deletes, bodies checked against their Content-Length.
    """

    # s3fs sends a file under two chunks in one PUT, read whole: 8 MiB chunks bound that to 16 MiB.
    _upload_options: ClassVar[dict[str, Any]] = {"chunksize": _CHUNK}

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        from fsspec.asyn import sync  # noqa: PLC0415

        result: T = sync(self.fs.loop, lambda: coro)
        return result

    async def _call(self, method: str, **kwargs: object) -> dict[str, Any]:
        reply: dict[str, Any] = await self.fs._call_s3(method, **kwargs)  # noqa: SLF001 - s3fs's retrying client call
        return reply

    def read(self, path: str) -> Blob | None:
        with translated(self, "read", path):
            try:
                data, etag = retrying(self, "read", path, lambda: self._sync(self._get(path)))
            except FileNotFoundError:
                return None
        return Blob(data, etag)

    async def _get(self, path: str) -> tuple[bytes, str]:
        # One GET that returns the body and its ETag together (s3fs's cat_file would HEAD first).
        # The body is read outside s3fs's retries, so its length is checked here: a reply cut off
        # mid-body, or a GET racing a DELETE that answers 200 with no body, is retried.
        bucket, key, _ = self.fs.split_path(path)
        resp = await self._call("get_object", Bucket=bucket, Key=key)
        try:
            data = await resp["Body"].read()
        finally:
            resp["Body"].close()
        expected = resp.get("ContentLength")
        if expected is not None and len(data) != int(expected):
            msg = f"reply cut off: received {len(data)} of {expected} bytes"
            raise TruncatedReplyError(errno.EIO, msg)
        return bytes(data), str(resp["ETag"])

    def tag(self, path: str) -> str | None:
        with translated(self, "stat", path):
            try:
                return str(retrying(self, "stat", path, lambda: self.fs.info(path))["ETag"])
            except FileNotFoundError:
                return None

    def replace(self, path: str, data: bytes, expect: str | None) -> str:
        def put() -> dict[str, Any]:
            conditions: dict[str, Any] = {"mode": "create"} if expect is None else {"IfMatch": expect}
            reply: dict[str, Any] = self.fs.pipe_file(path, data, **conditions)
            return reply

        with translated(self, "replace", path):
            try:
                out = retrying(self, "replace", path, put)
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

    def listdir(self, folder: str) -> list[str]:
        bucket, key, _ = self.fs.split_path(folder)
        prefix = key.rstrip("/") + "/"
        with translated(self, "list", folder):
            pages = retrying(self, "list", folder, lambda: self._sync(self._list(bucket, prefix, delimiter="/")))
        names = [k[len(prefix) :].rstrip("/") for k in pages]
        return [name for name in names if name and not name.startswith(".")]

    def markers(self, folder: str) -> dict[str, str]:
        bucket, key, _ = self.fs.split_path(folder)
        prefix = key.rstrip("/") + "/"
        items: dict[str, dict[str, Any]] = {}
        with translated(self, "list", folder):
            retrying(self, "list", folder, lambda: self._sync(self._list(bucket, prefix, "/", items)))
        found = {k[len(prefix) :]: str(item.get("ETag", "")) for k, item in items.items()}
        return {name: tag for name, tag in found.items() if name and not name.startswith(".")}

    def files(self, folder: str, tags: dict[str, str] | None = None) -> dict[str, int]:
        bucket, key, _ = self.fs.split_path(folder)
        prefix = key.rstrip("/") + "/"
        items: dict[str, dict[str, Any]] = {}
        with translated(self, "list", folder):
            retrying(self, "list", folder, lambda: self._sync(self._list(bucket, prefix, None, items)))
        found = {k[len(prefix) :]: item for k, item in items.items() if len(k) > len(prefix)}
        if tags is not None:
            tags.update((name, str(item.get("ETag", ""))) for name, item in found.items())
        return {name: int(item.get("Size", 0)) for name, item in found.items()}

    def copy(self, source: str, path: str, expect: str | None = None) -> None:
        # One CopyObject (s3fs's cp_file sends a HEAD of the source first), If-Match on the
        # source's ETag when *expect*; objects over 5 GiB, which CopyObject refuses, go through
        # s3fs's multipart copy (unconditional: refused when *expect* is given).
        src_bucket, src_key, _ = self.fs.split_path(source)
        bucket, key, _ = self.fs.split_path(path)
        copy: dict[str, Any] = {"Bucket": bucket, "Key": key, "CopySource": {"Bucket": src_bucket, "Key": src_key}}
        if expect is not None:
            copy["CopySourceIfMatch"] = expect
            if self.tag(source) != expect:  # S3 checks the condition; some S3-compatible stores (moto) don't
                raise ConflictError(f"{source} changed since it was listed")
        with translated(self, "copy", path):
            try:
                retrying(self, "copy", path, lambda: self._sync(self._call("copy_object", **copy)))
            except OSError as exc:
                if isinstance(exc, FileExistsError) or exc.errno == errno.EINVAL or "PreconditionFailed" in str(exc):
                    raise ConflictError(f"{source} changed since it was listed") from exc
                if ("InvalidRequest" not in str(exc) and "EntityTooLarge" not in str(exc)) or expect is not None:
                    raise
                retrying(self, "copy", path, lambda: self.fs.cp_file(source, path))

    async def _list(
        self, bucket: str, prefix: str, delimiter: str | None, items: dict[str, dict[str, Any]] | None = None
    ) -> list[str]:
        """Every key (and, with a delimiter, sub-folder) under *prefix*, following continuations;
        each key's listing entry (ETag, Size) goes into *items* if given.
        """
        keys: list[str] = []
        token: str | None = None
        extra: dict[str, Any] = {} if delimiter is None else {"Delimiter": delimiter}
        while True:
            page = await self._call(
                "list_objects_v2",
                Bucket=bucket,
                Prefix=prefix,
                **extra,
                **({} if token is None else {"ContinuationToken": token}),
            )
            keys.extend(item["Key"] for item in page.get("Contents", ()))
            if items is not None:
                items.update((item["Key"], item) for item in page.get("Contents", ()))
            keys.extend(item["Prefix"] for item in page.get("CommonPrefixes", ()))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return keys

    def delete(self, paths: list[str]) -> None:
        if not paths:
            return
        bucket = self.fs.split_path(paths[0])[0]
        keys = [self.fs.split_path(path)[1] for path in paths]
        with translated(self, "delete", paths[0]):
            retrying(self, "delete", paths[0], lambda: self._sync(self._delete_keys(bucket, keys)))

    def delete_tree(self, path: str) -> None:
        bucket, key, _ = self.fs.split_path(path)
        with translated(self, "delete", path):
            keys = retrying(self, "list", path, lambda: self._sync(self._list(bucket, key.rstrip("/") + "/", None)))
            retrying(self, "delete", path, lambda: self._sync(self._delete_keys(bucket, [key, *keys])))

    async def _delete_keys(self, bucket: str, keys: list[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
            out = await self._call("delete_objects", Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            failed = [e for e in out.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                msg = f"could not delete {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".strip()
                raise OSError(errno.EIO, msg)


def _no_bucket(backend: Backend, path: str) -> StoreError:
    bucket = path.split("/", 1)[0]
    return StoreError(f"bucket {bucket!r} does not exist or is not writable ({backend.uri_prefix}{path})")
