"""Storage primitives for the progress store: the Backend interface and the choice of backend.

Every backend offers the same few operations on whole objects: read with a version tag,
create-only write, conditional replace, unconditional atomic write, list, delete. The backends
(`_local_backend`, `_fsspec_backend`) are the only modules that touch the filesystem libraries;
their errors become StoreError through :func:`translated`, here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from batchrun.errors import ConflictError, StoreError

T = TypeVar("T")

# Our own retry rounds, around what botocore and s3fs already retry inside each call: a reply cut
# off mid-body (read outside their loops), a 409 conflict, a store that keeps failing. Each
# round that fails is logged, so a store being retried is visible, not a silent hang.
RETRY_ROUNDS = 3
_ROUND_PAUSE_S = 0.5

log = structlog.get_logger("batchrun.store")


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

    def markers(self, folder: str) -> dict[str, str]:
        """The objects directly in *folder*, each with a marker that changes whenever the object is
        rewritten (S3: its ETag, from one listing). Markers compare only with each other, not with tags.
        """

    def delete(self, paths: list[str]) -> None:
        """Delete objects; missing ones are fine."""

    def delete_tree(self, path: str) -> None:
        """Delete *path* and everything under *path*, if any."""

    # Whole files of an eval's state folder (batchrun/state.py), streamed, never held in memory.

    def files(self, folder: str, tags: dict[str, str] | None = None) -> dict[str, int]:
        """Every object under *folder* at any depth (dot-names too), by its '/'-separated path
        relative to *folder*, with its size; {} if there is none. *tags*, if given, gets each
        object's version tag where the listing tells it (S3: the ETag; disk: inode, mtime, size).
        """

    def upload(self, local: str, path: str) -> None:
        """Replace *path* whole with the content of the local file *local*."""

    def download(self, path: str, local: str) -> None:
        """Write the content of *path* to the local file *local* (FileNotFoundError if gone)."""

    def copy(self, source: str, path: str, expect: str | None = None) -> None:
        """Replace *path* whole with a copy of *source* (on S3 a server-side copy); with *expect*,
        only if *source* still has that tag from :meth:`files` (ConflictError otherwise).
        """


def hash_tag(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


@contextlib.contextmanager
def translated(backend: Backend, op: str, path: str) -> Iterator[None]:
    """Turn filesystem and client errors into StoreError naming the operation and object."""
    try:
        yield
    except (StoreError, FileExistsError):
        raise
    except PermissionError as exc:
        msg = f"access denied to {backend.uri_prefix}{path} ({op}): {reason(exc)}"
        raise StoreError(msg) from exc
    except Exception as exc:
        msg = f"progress store: cannot {op} {backend.uri_prefix}{path}: {reason(exc)}"
        raise StoreError(msg) from exc


class TruncatedReplyError(OSError):
    """A reply whose body is shorter than its Content-Length (cut off, or a GET racing a DELETE)."""


def is_busy(exc: BaseException) -> bool:
    """S3's 409 ConditionalRequestConflict: another conditional write to the key is in progress."""
    cause = exc.__cause__ or exc
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code == "ConditionalRequestConflict" or status == 409  # noqa: PLR2004 - HTTP status
    return isinstance(exc, OSError) and exc.errno == errno.EBUSY


def _transient(exc: BaseException) -> bool:
    """Whether trying the same call again may succeed (a definite answer never does)."""
    if isinstance(exc, (FileExistsError, FileNotFoundError, PermissionError, StoreError, ValueError, TypeError)):
        return False
    if isinstance(exc, OSError) and exc.errno == errno.EINVAL:  # 412: precondition failed
        return False
    return isinstance(exc, Exception)


def retrying(backend: Backend, op: str, path: str, call: Callable[[], T], rounds: int = RETRY_ROUNDS) -> T:
    """*call*, tried again after a transient error, up to *rounds* times, logging each failed round.

    A 409 that outlasts the rounds is a ConflictError (the caller's conflict handling applies).
    """
    for round_ in range(1, rounds + 1):
        try:
            return call()
        except Exception as exc:
            if not _transient(exc):
                raise
            if round_ == rounds:
                if is_busy(exc):
                    raise ConflictError(f"{path}: a concurrent conditional write is in progress") from exc
                raise
            log.warning("store.retrying", op=op, object=f"{backend.uri_prefix}{path}", round=round_, error=reason(exc))
            time.sleep(_ROUND_PAUSE_S * 2 ** (round_ - 1) * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
    raise AssertionError  # unreachable: the last round returns or raises


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# botocore's standard retry mode with a bounded total per call, times RETRY_ROUNDS of ours: a store
# that stays unreachable fails within about half a minute (exit 3) instead of hanging the Job.
_S3_DEFAULTS: Mapping[str, Any] = {
    "config_kwargs": {
        "retries": {"mode": "standard", "total_max_attempts": 3},
        "connect_timeout": 5,
        "read_timeout": 10,  # progress objects are small: a store that doesn't answer in 10 s is retried
    },
}


def open_backend(protocol: str, storage_options: Mapping[str, Any]) -> Backend:
    """The backend for *protocol* ("" or "file" is the local disk)."""
    if protocol in ("", "file", "local"):
        from batchrun._local_backend import LocalBackend  # noqa: PLC0415

        return LocalBackend()
    import fsspec  # noqa: PLC0415 - local runs never import fsspec

    options = dict(storage_options)
    if protocol in ("s3", "s3a"):
        config = {**_S3_DEFAULTS["config_kwargs"], **options.pop("config_kwargs", {})}
        options.update(skip_instance_cache=True, use_listings_cache=False, config_kwargs=config)
    try:
        fs = fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError, TypeError) as exc:
        raise StoreError(f"cannot open {protocol}:// filesystem: {reason(exc)}") from exc
    from batchrun._fsspec_backend import FsspecBackend, S3Backend  # noqa: PLC0415

    if protocol in ("s3", "s3a"):
        # s3fs's own loop would retry each timeout 5 times on top of botocore's tries and our rounds
        # (a store that accepts connections and never answers then stayed silent for many minutes).
        fs.retries = 1
        return S3Backend(fs, f"{protocol}://")
    return FsspecBackend(fs, f"{protocol}://")
