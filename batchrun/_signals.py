"""Signals: what batchrun inherits, and SIGTERM, SIGINT and SIGHUP as a stop request.

A launcher can leave signal dispositions that break batchrun or its evals, and an exec keeps
them: SIGCHLD ignored makes the kernel reap evals itself, so ``wait()`` reports 0 for an eval
that exited 3; a blocked signal never arrives, in batchrun or in any eval (children inherit the
mask); an ignored SIGQUIT, SIGUSR1... makes an eval deaf to that ``--stop-signal``.
:func:`reset_inherited_signals` undoes these first thing. Python itself ignores SIGPIPE (a write
to a closed pipe raises instead) and ``subprocess`` gives every eval back the default SIGPIPE
and SIGXFSZ (``restore_signals``). A SIGHUP ignored on entry (``nohup``) stays ignored by
batchrun; otherwise SIGHUP stops the run like SIGTERM.

Until the runner takes over (:meth:`StopRequest.on_stop`), a stop signal raises
:class:`~batchrun.errors.StoppedError` in the main thread, so start-up (opening, retrying or
claiming the store) ends at once instead of when its retries run out.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Callable
from types import FrameType

from batchrun.errors import StoppedError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Signals an eval may get from batchrun (--stop-signal) or rely on; an ignored one stays so across exec.
_FOR_EVALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def _still_ignored(_signum: int, _frame: FrameType | None) -> None:
    """Ignores a signal that was ignored on entry; unlike SIG_IGN, an exec resets it for the evals."""


def reset_inherited_signals() -> None:
    """Undo the inherited signal state that would falsify results or stop signals (main thread,
    before any other thread or child exists: both inherit the mask).
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for signum in _FOR_EVALS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, _still_ignored)


class StopRequest:
    """Records the first stop signal and wakes whoever waits; a second signal sets :attr:`urgent`.

    The kernel may deliver a signal to any thread, and CPython runs handlers only in the main
    thread, when it next runs bytecode: a main thread blocked in an untimed wait (a future's
    result) may never see a signal that went to another thread. So the handlers' C part writes
    the signal's number to a wakeup fd, and a thread of ours acts on it (:meth:`request`) at once.
    """

    def __init__(self) -> None:
        """Nothing is installed until :meth:`install`."""
        self.signum: int | None = None
        self.reason: str | None = None  # batchrun's own reason to stop, when no signal asked for it
        self.requested = threading.Event()
        self.urgent = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._previous: dict[int, object] = {}
        self._raising = False
        self._raised = False
        self._nudges: dict[int, int] = {}  # signals the watcher sent the main thread, by number
        self._lock = threading.Lock()
        self._wakeup: tuple[int, int] | None = None
        self._previous_wakeup = -1

    def install(self, *, raising: bool = False) -> None:
        """Handle the stop signals from now on (main thread only); with *raising*, a signal raises
        StoppedError where the main thread is, until the first :meth:`on_stop` callback (the runner).
        """
        self._raising = raising
        for signum in STOP_SIGNALS:
            if signum == signal.SIGHUP and signal.getsignal(signum) in {signal.SIG_IGN, _still_ignored}:
                continue  # nohup: the user asked for batchrun to outlive the terminal
            self._previous[signum] = signal.signal(signum, self._handle)
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = read_fd, write_fd
        self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=self._wakeup, name="batchrun-signals", daemon=True).start()

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.write(self._wakeup[1], b"\0")  # ends the watcher, which closes both ends
            self._wakeup = None

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call *callback* once when the first stop signal arrives (at once if one already did).

        From the first call on, a signal no longer raises: whoever registers stops in order.
        """
        self._raising = False
        with self._lock:
            self._callbacks.append(callback)
            already = self.signum is not None
        if already:
            callback()

    def request(self, signum: int, *, escalate: bool = True, reason: str | None = None) -> bool:
        """Ask for a stop as if *signum* had arrived (or for batchrun's own *reason*); whether this
        was the first request. A later one makes the stop urgent (no more grace) unless *escalate*
        is False (batchrun's own reasons, which must not cut short a stop the user asked for).
        """
        with self._lock:
            first = self.signum is None
            if first:
                self.signum, self.reason = signum, reason
            callbacks = list(self._callbacks) if first else []
        if not first:
            if escalate:
                self.urgent.set()
            return False
        self.requested.set()
        for callback in callbacks:
            callback()
        return True

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        """The Python part, in the main thread: the watcher has recorded the signal already."""
        if self._raising and not self._raised:
            self._raised = True  # once: a later signal must not raise again in the error's handling
            raise StoppedError(signum)

    def _watch(self, read_fd: int, write_fd: int) -> None:
        """Act on every stop signal as it arrives, whichever thread the kernel gave it to."""
        try:
            while True:
                select.select([read_fd], [], [])
                try:
                    data = os.read(read_fd, 64)
                except BlockingIOError:
                    continue
                for signum in data:
                    if signum == 0:
                        return
                    if signum not in self._previous:  # the no-op handler of a signal ignored on entry
                        continue
                    if self._nudges.get(signum):
                        self._nudges[signum] -= 1  # our own nudge, below, coming back
                        continue
                    self.request(signum)
                    if self._raising:
                        # The main thread may be in an untimed wait that a signal given to another
                        # thread does not interrupt: send it one, so that its handler runs and raises.
                        self._nudges[signum] = self._nudges.get(signum, 0) + 1
                        signal.pthread_kill(threading.main_thread().ident or 0, signum)
        finally:
            os.close(read_fd)
            os.close(write_fd)
