"""Where batchrun's own output meets the evals' output: line-atomic writes to stdout/stderr,
the `[eval] ` prefix when several evals run at once, and a progress bar on a terminal.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import BinaryIO, TextIO

_BAR_WIDTH = 24


class Console:
    """Serialises whole lines from many threads; redraws the bar below them on a terminal."""

    def __init__(self, out: BinaryIO | None = None, err: TextIO | None = None, *, bar: bool | None = None) -> None:
        self._out = out if out is not None else sys.stdout.buffer
        self._err = err if err is not None else sys.stderr
        self._err_bytes: BinaryIO = getattr(self._err, "buffer", None) or self._out
        self._lock = threading.Lock()
        self._bar_enabled = self._err.isatty() if bar is None else bar
        self._bar_text = ""
        self._total = 0
        self._done_at_start = 0
        self._started = time.monotonic()

    # --- evals' output --------------------------------------------------------------------

    def eval_line(self, line: bytes, *, stderr: bool, prefix: bytes = b"") -> None:
        """Write one line of an eval's output to the matching stream."""
        stream = self._err_bytes if stderr else self._out
        if not line.endswith(b"\n"):
            line += b"\n"
        with self._lock:
            self._clear_bar()
            if stderr:
                self._err.flush()
            stream.write(prefix + line)
            stream.flush()
            self._draw_bar()

    # --- batchrun's own log lines (structlog writes here) ---------------------------------

    def write(self, text: str) -> int:
        """File-like sink for the logger."""
        with self._lock:
            self._clear_bar()
            self._err.write(text)
            self._draw_bar()
        return len(text)

    def flush(self) -> None:
        """File-like sink for the logger."""
        with self._lock:
            self._err.flush()

    # --- the progress bar -----------------------------------------------------------------

    def start_bar(self, *, done: int, total: int) -> None:
        """Show done/total from now on (a terminal only)."""
        self._done_at_start, self._total, self._started = done, total, time.monotonic()
        self.update_bar(done)

    def update_bar(self, done: int) -> None:
        """Redraw with *done* evals finished."""
        if not self._bar_enabled or not self._total:
            return
        fraction = done / self._total
        filled = int(_BAR_WIDTH * fraction)
        this_run = done - self._done_at_start
        elapsed = time.monotonic() - self._started
        eta = "--:--"
        if this_run > 0 and done < self._total:
            eta = _clock(elapsed / this_run * (self._total - done))
        elif done >= self._total:
            eta = "done"
        with self._lock:
            self._clear_bar()
            bar = "#" * filled + "." * (_BAR_WIDTH - filled)
            self._bar_text = f"[{bar}] {done}/{self._total} {fraction:4.0%} ETA {eta}"
            self._draw_bar()

    def stop_bar(self) -> None:
        """Leave the terminal's last line clean."""
        with self._lock:
            self._clear_bar()
            self._bar_text = ""

    def _clear_bar(self) -> None:
        if self._bar_enabled and self._bar_text:
            self._err.write("\r\x1b[K")

    def _draw_bar(self) -> None:
        if self._bar_enabled and self._bar_text:
            self._err.write(self._bar_text)
            self._err.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
