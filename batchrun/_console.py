r"""Where batchrun's own output meets the evals' output: line-atomic writes to stdout/stderr,
the `[eval] ` prefix when several evals run at once, and a progress bar on a terminal.

A stream that can no longer be written (its reader went away: `batchrun run ... | head`, a closed
terminal) is dropped, as `nohup` would: the run goes on, and its exit code stays true.
When batchrun logs JSON, an eval's output can't pass for one of its log lines: a line (or a part
of one that a line splitter would cut at `\r` and the like) whose first visible character is `{`
gets the eval's `[name] ` label before that `{`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from typing import IO, Any, BinaryIO, TextIO

_BAR_WIDTH = 24
# `{` at the start of a line, or of a part that str.splitlines() would make a line of its own
# (decoded as UTF-8 or as Latin-1, where NEL is a lone \x85), after nothing visible (spaces,
# control characters, NULs, byte-order marks, any non-ASCII byte).
_JSON_START = re.compile(rb"(?:\A|[\r\x0b\x0c\x1c-\x1e\x85]|\xe2\x80[\xa8\xa9])[\x00-\x20\x7f-\xff]*(?=\{)")


class Console:
    """Serialises whole lines from many threads; redraws the bar below them on a terminal."""

    def __init__(self, out: BinaryIO | None = None, err: TextIO | None = None, *, bar: bool | None = None) -> None:
        self._out = out if out is not None else sys.stdout.buffer
        self._err = err if err is not None else sys.stderr
        self._err_bytes: BinaryIO = getattr(self._err, "buffer", None) or self._out
        self._lock = threading.Lock()
        self._bar_enabled = self._err.isatty() if bar is None else bar
        self._out_open = self._err_open = True
        self.guard_json = False  # set while batchrun's own log lines are JSON
        self._bar_text = ""
        self._total = 0
        self._done_at_start = 0
        self._started = time.monotonic()

    # --- evals' output --------------------------------------------------------------------

    def eval_line(self, line: bytes, *, stderr: bool, prefix: bytes = b"", label: bytes = b"[eval] ") -> None:
        """Write one line of an eval's output to the matching stream; *label* goes before a `{`
        that could start a line looking like batchrun's JSON log lines (when they are JSON).
        """
        if not line.endswith(b"\n"):
            line += b"\n"
        if self.guard_json and not prefix and b"{" in line:
            line = _JSON_START.sub(lambda match: match.group() + label, line)
        with self._lock:
            self._clear_bar()
            if stderr:
                if self._err_open:
                    self._err_open = _written(self._err_bytes, prefix + line, first=self._err)
            elif self._out_open:
                self._out_open = _written(self._out, prefix + line)
            self._draw_bar()

    # --- batchrun's own log lines (structlog writes here) ---------------------------------

    def write(self, text: str) -> int:
        """File-like sink for the logger."""
        with self._lock:
            self._clear_bar()
            if self._err_open:
                self._err_open = _written(self._err, text)
            self._draw_bar()
        return len(text)

    def flush(self) -> None:
        """File-like sink for the logger."""
        with self._lock:
            if self._err_open:
                self._err_open = _written(self._err, "")

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
        if self._bar_enabled and self._bar_text and self._err_open:
            self._err_open = _written(self._err, "\r\x1b[K", flush=False)

    def _draw_bar(self) -> None:
        if self._bar_enabled and self._bar_text and self._err_open:
            self._err_open = _written(self._err, self._bar_text)


def _written(stream: IO[Any], data: str | bytes, *, first: IO[Any] | None = None, flush: bool = True) -> bool:
    """Write and flush *data* (after flushing *first*, which shares the stream's file); False,
    and the file sent to /dev/null, once the reader is gone.
    """
    try:
        if first is not None:
            first.flush()
        if data:
            stream.write(data)
        if flush:
            stream.flush()
    except (OSError, ValueError):  # EPIPE, EIO from a hung-up terminal, or a closed file object
        with contextlib.suppress(OSError, ValueError):  # so that later writers (and exit) don't fail
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, stream.fileno())
            finally:
                os.close(devnull)
        return False
    return True


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
