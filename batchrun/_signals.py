"""SIGTERM and SIGINT as a stop request: the first asks for an orderly stop, a second for haste."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Records the first stop signal and wakes whoever waits; a second signal sets :attr:`urgent`."""

    def __init__(self) -> None:
        """Nothing is installed until :meth:`install`."""
        self.signum: int | None = None
        self.requested = threading.Event()
        self.urgent = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Handle SIGTERM and SIGINT from now on (main thread only)."""
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call *callback* once when the first stop signal arrives (at once if one already did)."""
        self._callbacks.append(callback)
        if self.signum is not None:
            callback()

    def request(self, signum: int) -> None:
        """Ask for a stop as if *signum* had arrived."""
        if self.signum is None:
            self.signum = signum
            self.requested.set()
            for callback in self._callbacks:
                callback()
        else:
            self.urgent.set()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.request(signum)
