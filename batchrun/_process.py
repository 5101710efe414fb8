r"""One attempt's process: started in its own session and process group, its output pumped line by
line to the console (and kept for the attempt's log) from the calling thread, stopped as a group.

Every wait is bounded: once the leader has exited, its output is read for at most ``DRAIN_S``
more (a helper that left the group, e.g. through setsid, may hold the pipes open for ever), and a
line without a newline is passed on in pieces of at most ``LINE_LIMIT_BYTES`` (progress bars that
redraw with ``\r`` never end their line), so memory and time stay linear in the output.

Process ids are reused (32,768 of them on many machines), so the group is only ever signalled
while its leader is not yet reaped: until then the kernel keeps the id ours. Reaping happens in
one place, :meth:`EvalProcess.reap`, under the same lock as signalling.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from batchrun._console import Console

TAIL_LINES = 20
LOG_LIMIT_BYTES = 64 * 2**20  # output kept per attempt; the rest is dropped with a note
LINE_LIMIT_BYTES = 2**16  # an unfinished line is passed on once it grows this long
DRAIN_S = 1.0  # output still read after the leader exited, from whatever holds the pipes
_TRUNCATED = b"\n[batchrun: output beyond this point was not kept]\n"
_SPOOL_BYTES = 2**20
_READ_BYTES = 2**16
_POLL_S = 0.05
READY_WAIT_S = 1.0  # the most an attempt's first output line waits for its `eval.started` line


@dataclass(slots=True)
class Output:
    """An attempt's output: the last lines for the record, all of it (up to a limit) for the log."""

    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    spool: IO[bytes] = field(default_factory=lambda: tempfile.SpooledTemporaryFile(_SPOOL_BYTES))  # noqa: SIM115
    size: int = 0
    _open_line: bool | None = None  # the stream (stderr?) whose last piece did not end its line

    def add(self, piece: bytes, *, stderr: bool = False) -> None:
        """Keep a line, or a piece of one (no trailing newline) that the stream's next piece continues."""
        text = piece.decode("utf-8", errors="replace")
        if self._open_line is stderr and self.tail:
            text = self.tail.pop() + text
        self._open_line = None if piece.endswith(b"\n") else stderr
        # What a terminal would show: a progress bar's last redraw, not every \r-separated one.
        self.tail.append(text.rstrip("\r\n").rpartition("\r")[2])
        room = LOG_LIMIT_BYTES - self.size
        if room > 0:
            self.spool.write(piece[:room])
            self.size += min(room, len(piece))
            if self.size >= LOG_LIMIT_BYTES:
                self.spool.write(_TRUNCATED)

    def read(self) -> bytes:
        """Everything kept, once."""
        self.spool.seek(0)
        data = self.spool.read()
        self.spool.close()
        return data


class EvalProcess:
    """A command run in a new session (so its own process group), stdin closed, output piped."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        """Start *argv*, never through a shell; raises OSError if it can't be started."""
        # Plain fds, polled and read with os.read: no file objects to set up per attempt.
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, env=env, start_new_session=True
            )
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self.pipes = {False: out_r, True: err_r}  # the read ends still open: stdout, stderr
        self._lock = threading.Lock()
        self._reaped = False
        # Put before its output lines that could pass for batchrun's JSON log lines (see Console).
        self.label = f"[{env.get('BATCHRUN_EVAL', 'eval')}] ".encode(errors="replace")

    def close_pipe(self, stderr: bool) -> None:  # noqa: FBT001 - the pipe's key, as the pump holds it
        """Stop reading one of its output pipes."""
        fd = self.pipes.pop(stderr, None)
        if fd is not None:
            os.close(fd)

    def exited(self) -> bool:
        """Whether the leader has exited (without reaping it)."""
        with self._lock:
            if self._reaped:
                return True
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def send(self, signum: signal.Signals) -> None:
        """Send *signum* to the whole group, unless it is gone."""
        with self._lock:
            if not self._reaped:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signum)

    def stop(self, signum: signal.Signals, grace: float, hurry: threading.Event) -> None:
        """Send *signum*, wait up to *grace* seconds for the leader (less once *hurry* is set), kill the group."""
        self.send(signum)
        deadline = time.monotonic() + grace
        while not self.exited() and time.monotonic() < deadline:
            if hurry.wait(_POLL_S):
                break
        self.send(signal.SIGKILL)

    def reap(self) -> int:
        """Kill what is left of the group (the leader too, if it still runs), then collect its status."""
        self.send(signal.SIGKILL)
        with self._lock:
            code = self.proc.wait()
            self._reaped = True
        for stderr in list(self.pipes):  # a pump cut short by an error left them open
            self.close_pipe(stderr)
        return code

    def pump(
        self,
        console: Console,
        prefix: bytes,
        output: Output,
        deadline: float | None,
        ready: threading.Event | None = None,
    ) -> bool:
        """Copy stdout and stderr to the console until the leader has exited and both pipes closed,
        or ``DRAIN_S`` after its exit at most; False if *deadline* (a time.monotonic() value) passed
        before the leader exited.

        When the leader exits, the rest of its group is killed: a helper it started would
        otherwise hold the pipes open, and outlive batchrun. One that left the group is cut off
        when the drain period ends. The first line waits up to ``READY_WAIT_S`` for *ready* (the
        attempt's `eval.started` line, logged once its start is durable).
        """
        with _exit_watch(self.proc.pid) as exit_fd:
            pump = _Pump(self, console, prefix, output, exit_fd)
            pump.ready = ready
            return pump.run(deadline)


class _Pump:
    """The state of one pump: what it polls, unfinished lines, when the leader exited.

    poll, not epoll: three fds polled a few times cost less without an epoll fd made and closed.
    """

    def __init__(
        self, process: EvalProcess, console: Console, prefix: bytes, output: Output, exit_fd: int | None
    ) -> None:
        self.process, self.console, self.prefix, self.output = process, console, prefix, output
        self.exit_fd = exit_fd
        self.partial = {False: bytearray(), True: bytearray()}
        self.drain_until: float | None = None  # set when the leader exits
        self.ready: threading.Event | None = None  # what the first line waits for
        self.poller = select.poll()
        self.pipes = {fd: is_err for is_err, fd in process.pipes.items()}  # polled: fd -> stderr?
        for fd in self.pipes:
            self.poller.register(fd, select.POLLIN)
        if exit_fd is not None:
            self.poller.register(exit_fd, select.POLLIN)

    def run(self, deadline: float | None) -> bool:
        try:
            while self.drain_until is None or self.pipes:
                if self.drain_until is not None:
                    # The leader is gone: its time limit no longer applies, the drain period does.
                    deadline = self.drain_until
                wait = self._wait(deadline)
                if wait is not None and wait <= 0:
                    return self.drain_until is not None
                for fd, _ in self.poller.poll(None if wait is None else wait * 1000):
                    if fd == self.exit_fd:
                        self.poller.unregister(fd)
                        self.exit_fd = -1  # seen: not polled again, and no longer needs a look
                        self._on_exit()
                    elif fd in self.pipes:
                        self._read(fd)
                if self.exit_fd is None and self.drain_until is None and self.process.exited():
                    self._on_exit()
            return True
        finally:
            if self.drain_until is not None:
                self._close_pipes()
            for is_err, pending in self.partial.items():  # a later pump would not know of it
                self._emit(bytes(pending), is_err=is_err)
                pending.clear()

    def _wait(self, deadline: float | None) -> float | None:
        """Seconds until *deadline* (None: no limit); at most _POLL_S while the leader's exit can
        only be seen by looking (no pidfd).
        """
        wait = None if deadline is None else deadline - time.monotonic()
        if self.exit_fd is None and self.drain_until is None:
            wait = _POLL_S if wait is None else min(wait, _POLL_S)
        return wait

    def _on_exit(self) -> None:
        self.drain_until = time.monotonic() + DRAIN_S
        self.process.send(signal.SIGKILL)  # the leader is not reaped yet: the group id is still ours

    def _close_pipes(self) -> None:
        """Stop reading: what still holds the pipes outlived the leader and its drain period."""
        for fd, is_err in list(self.pipes.items()):
            self._stop_reading(fd, is_err=is_err)

    def _stop_reading(self, fd: int, *, is_err: bool) -> None:
        self.poller.unregister(fd)
        del self.pipes[fd]
        self.process.close_pipe(is_err)

    def _read(self, fd: int) -> None:
        is_err = self.pipes[fd]
        chunk = os.read(fd, _READ_BYTES)
        pending = self.partial[is_err]
        if not chunk:
            self._stop_reading(fd, is_err=is_err)
            self._emit(bytes(pending), is_err=is_err)
            pending.clear()
            return
        searched = len(pending)  # what is pending holds no newline: search only the new bytes
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", searched)) >= 0:
            self._emit(bytes(pending[start : end + 1]), is_err=is_err)
            start = searched = end + 1
        while len(pending) - start >= LINE_LIMIT_BYTES:
            # A line that never ends (\r progress bars): pass it on in pieces, at a redraw if possible.
            cut = pending.rfind(b"\r", start, start + LINE_LIMIT_BYTES) + 1 or start + LINE_LIMIT_BYTES
            self._emit(bytes(pending[start:cut]), is_err=is_err)
            start = cut
        del pending[:start]

    def _emit(self, piece: bytes, *, is_err: bool) -> None:
        if piece and self.ready is not None:
            self.ready.wait(READY_WAIT_S)  # after its `eval.started` line, unless the store is that slow
            self.ready = None
        if piece:
            self.console.eval_line(piece, stderr=is_err, prefix=self.prefix, label=self.process.label)
            self.output.add(piece, stderr=is_err)


@contextlib.contextmanager
def _exit_watch(pid: int) -> Iterator[int | None]:
    """A pidfd that becomes readable when *pid* exits (Linux 5.3+), else None."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)
