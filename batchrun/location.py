"""Where a run's progress lives: the progress URI, resolved and checked before anything is written.

The default is a folder of the user's own: ``$XDG_STATE_HOME/batchrun/`` when that is set, else
``/tmp/batchrun-UID/`` (``$TMPDIR`` instead of ``/tmp`` when set). Another local user could
create that name in ``/tmp`` first and plant links in it, so the default folder is created 0700
and refused if it is a link, belongs to someone else, or is writable by group or others. On the
local disk, wherever it is, the progress file ``P`` and its sidecar ``P.d`` must not be links
(the backend then refuses links below them), while links in the user's own path above ``P`` are
resolved here, once.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from batchrun.errors import ProgressLocationError, StoreError

PROGRESS_FILENAME = "{model}.{eval_set}.progress.txt"
_SHARED_BITS = stat.S_IWGRP | stat.S_IWOTH


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
    text = template.strip() if template else _escaped(private_default_folder()) + "/"
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
        return _local(os.path.abspath(uri), uri)
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", protocol):
        msg = f"malformed progress URI {uri!r}: bad protocol {protocol!r}"
        raise ProgressLocationError(msg)
    if protocol == "file":
        return _local(uri, "/" + path.lstrip("/"))
    _check_protocol(protocol, uri)
    path = path.strip("/")
    if protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs") and "/" not in path:
        msg = f"progress URI {uri!r} needs a bucket and a key, like {protocol}://bucket/run.progress.txt"
        raise ProgressLocationError(msg)
    if not path:
        msg = f"progress URI {uri!r} has no path"
        raise ProgressLocationError(msg)
    return ProgressLocation(uri=uri, protocol=protocol, path=path)


def default_uri(model: str, eval_set: str) -> str:
    """The progress URI a run of *model* and *eval_set* has without --progress (nothing is created)."""
    return resolve_location(_escaped(default_folder()) + "/", model=model, eval_set=eval_set).uri


def _check_protocol(protocol: str, uri: str) -> None:
    from fsspec.registry import known_implementations, registry  # noqa: PLC0415

    if protocol not in known_implementations and protocol not in registry:
        msg = f"progress URI {uri!r}: unknown protocol {protocol!r}"
        raise ProgressLocationError(msg)


def default_folder() -> str:
    """The user's own default progress folder (see the module docstring)."""
    state = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(state):  # the XDG spec: a relative value is to be ignored
        return os.path.join(state, "batchrun")
    return tmp_folder()


def tmp_folder() -> str:
    """The user's own folder under ``$TMPDIR`` or ``/tmp``."""
    tmp = os.environ.get("TMPDIR") or "/tmp"  # noqa: S108 - a per-user folder, checked below
    return os.path.join(os.path.abspath(tmp), f"batchrun-{os.geteuid()}")


def default_state_root() -> str:
    """Where evals' local state folders go by default: ``state/`` in the user's own temp folder."""
    return os.path.join(private_default_folder(tmp_folder()), "state")


def private_default_folder(folder: str | None = None) -> str:
    """Create the default folder (0700), or check that the existing one is the user's alone."""
    folder = default_folder() if folder is None else folder
    try:
        os.makedirs(os.path.dirname(folder), mode=0o700, exist_ok=True)
        os.mkdir(folder, 0o700)  # create, then check: no window for another user to slip a link in
    except FileExistsError:
        pass
    except OSError as exc:
        msg = f"cannot create the default progress folder {folder}: {exc.strerror or exc}"
        raise StoreError(msg) from None
    try:
        info = os.lstat(folder)
    except OSError as exc:
        msg = f"cannot use the default progress folder {folder}: {exc.strerror or exc}"
        raise StoreError(msg) from None
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder"
    elif info.st_uid != os.geteuid():
        problem = f"belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})"
    elif info.st_mode & _SHARED_BITS:
        problem = f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    if problem is not None:
        msg = f"default progress folder {folder} {problem}; give --progress to keep progress elsewhere"
        raise ProgressLocationError(msg)
    return folder


def _escaped(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _local(uri: str, path: str) -> ProgressLocation:
    """A local progress file: P must not be a folder or a link, nor P.d a link; the folders above
    P are resolved to their real path, so the backend can refuse any link it meets below.
    """
    path = os.path.abspath(path)
    for candidate, what in ((path, "progress file"), (f"{path}.d", "progress folder")):
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            continue  # missing (a new run), or unreadable: the store says so when it gets there
        if stat.S_ISLNK(mode):
            msg = f"{what} {candidate} is a symbolic link; batchrun never follows links for its own files"
            raise ProgressLocationError(msg)
        if candidate == path and stat.S_ISDIR(mode):
            msg = f"progress path {path} is a directory; end it with / to put the progress file inside"
            raise ProgressLocationError(msg)
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    return ProgressLocation(uri=uri, protocol="", path=real)
