"""Where a run's progress lives: the progress URI, resolved and checked before anything is written."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from batchrun.errors import ProgressLocationError

DEFAULT_PROGRESS = "/tmp/batchrun/{model}.{eval_set}.progress.txt"  # noqa: S108 - documented default
PROGRESS_FILENAME = "{model}.{eval_set}.progress.txt"


@dataclass(frozen=True, slots=True)
class ProgressLocation:
    """A resolved progress URI: the filesystem protocol and the path within it."""

    uri: str
    protocol: str
    path: str

    @property
    def sidecar(self) -> str:
        """The folder beside the progress file that holds everything else."""
        return f"{self.path}.d"

    @property
    def events(self) -> str:
        """Where create-only event objects go."""
        return f"{self.sidecar}/events"


def _path_part(value: str) -> str:
    return value.replace("/", "_")


def resolve_location(template: str | None, *, model: str, eval_set: str) -> ProgressLocation:
    """Fill in ``{model}``/``{eval_set}`` and a trailing-``/`` folder, and check the protocol."""
    text = (template or DEFAULT_PROGRESS).strip()
    if not text or any(ord(ch) < 32 for ch in text):  # noqa: PLR2004 - control characters
        msg = f"malformed progress URI {template!r}"
        raise ProgressLocationError(msg)
    if text.endswith("/"):
        text += PROGRESS_FILENAME
    try:
        uri = text.format(model=_path_part(model), eval_set=_path_part(eval_set))
    except (KeyError, IndexError, ValueError) as exc:
        msg = f"progress URI {template!r}: only {{model}} and {{eval_set}} may be filled in ({exc})"
        raise ProgressLocationError(msg) from None
    protocol, sep, path = uri.partition("://")
    if not sep:
        return ProgressLocation(uri=os.path.abspath(uri), protocol="", path=os.path.abspath(uri))
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", protocol):
        msg = f"malformed progress URI {uri!r}: bad protocol {protocol!r}"
        raise ProgressLocationError(msg)
    if protocol == "file":
        return ProgressLocation(uri=uri, protocol="", path=os.path.abspath("/" + path.lstrip("/")))
    _check_protocol(protocol, uri)
    path = path.strip("/")
    if protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs") and "/" not in path:
        msg = f"progress URI {uri!r} needs a bucket and a key, like {protocol}://bucket/run.progress.txt"
        raise ProgressLocationError(msg)
    if not path:
        msg = f"progress URI {uri!r} has no path"
        raise ProgressLocationError(msg)
    return ProgressLocation(uri=uri, protocol=protocol, path=path)


def _check_protocol(protocol: str, uri: str) -> None:
    from fsspec.registry import known_implementations, registry  # noqa: PLC0415

    if protocol not in known_implementations and protocol not in registry:
        msg = f"progress URI {uri!r}: unknown protocol {protocol!r}"
        raise ProgressLocationError(msg)
