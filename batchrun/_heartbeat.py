"""The heartbeat object of one worker, ``P.d/workers/W.json``, and what it tells about the
process that wrote it (fleet.py says how workers use it).
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from batchrun._backends import Backend


def boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    return ""


def pid_namespace() -> str:
    """The PID namespace of the calling process (Linux), e.g. ``pid:[4026531836]``; "" where unknown."""
    with contextlib.suppress(OSError):
        return str(Path("/proc/self/ns/pid").readlink())
    return ""


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()[19]
    return ""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The content of ``workers/W.json``."""

    worker: str
    writer: str
    token: int
    state: str  # "live", "left", or "dead" (declared by another worker)
    host: str
    pid: int
    boot: str = ""
    process_start: str = ""
    pid_ns: str = ""
    beat: int = 0
    at: float = 0.0  # wall time of this write: shown by `status`, never used to judge liveness
    started_at: float = 0.0
    running: tuple[str, ...] = ()
    completed: int = 0
    note: str = ""

    def to_bytes(self) -> bytes:
        """The stored object."""
        return json.dumps({**asdict(self), "version": 1}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Heartbeat | None:
        """Parse a stored object; None if it is not one."""
        try:
            raw = json.loads(data)
            return cls(
                worker=str(raw["worker"]),
                writer=str(raw["writer"]),
                token=int(raw["token"]),
                state=str(raw["state"]),
                host=str(raw.get("host", "")),
                pid=int(raw.get("pid", 0)),
                boot=str(raw.get("boot", "")),
                process_start=str(raw.get("process_start", "")),
                pid_ns=str(raw.get("pid_ns", "")),
                beat=int(raw.get("beat", 0)),
                at=float(raw.get("at", 0.0)),
                started_at=float(raw.get("started_at", 0.0)),
                running=tuple(map(str, raw.get("running", ()))),
                completed=int(raw.get("completed", 0)),
                note=str(raw.get("note", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def process_gone(self) -> bool:
        """Whether this heartbeat's process is known dead: it ran on this host since this boot and
        its pid is gone or now belongs to another process.
        """
        if self.host != socket.gethostname() or not self.boot or self.boot != boot_id():
            return False
        if not self.pid_ns or self.pid_ns != pid_namespace():
            return False  # another PID namespace (a container sharing the host name): pids say nothing
        # A pid that now belongs to a process started at another time (a container restarted in
        # place reuses pids) is as gone as a pid that is free.
        start = process_start(self.pid)
        return not start or (bool(self.process_start) and start != self.process_start)

    def describe(self) -> str:
        """Who holds the id, for one-line messages."""
        return f"process {self.writer} on host {self.host} (pid {self.pid})"


def read_workers(backend: Backend, folder: str) -> list[Heartbeat]:
    """Every worker's heartbeat as stored now (for `status`)."""
    found = []
    for name in sorted(backend.listdir(folder)):
        blob = backend.read(f"{folder}/{name}")
        beat = None if blob is None else Heartbeat.from_bytes(blob.data)
        if beat is not None:
            found.append(beat)
    return found
