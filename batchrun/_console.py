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
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, BinaryIO, TextIO

_BAR_WIDTH = 24
_NAMES = 3  # running evals named on the bar; more are counted

# What the bar shows besides the counts: the running evals, how many failed, a stop in progress.
BarStatus = tuple[Sequence[str], int, str]
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
        self._done = 0
        self._status: Callable[[], BarStatus] | None = None
        self._ticking = threading.Event()

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

    def start_bar(self, *, done: int, total: int, status: Callable[[], BarStatus] | None = None) -> None:
        """Show done/total from now on (a terminal only), with what *status* says (running evals,
        failures, a stop in progress), redrawn every second.
        """
        self._done_at_start, self._total, self._started = done, total, time.monotonic()
        self._status = status
        self.update_bar(done)
        if self._bar_enabled and total:
            self._ticking.clear()
            threading.Thread(target=self._tick, name="batchrun-bar", daemon=True).start()

    def _tick(self) -> None:
        while not self._ticking.wait(1.0):
            self.update_bar()

    def update_bar(self, done: int | None = None) -> None:
        """Redraw with *done* evals finished (as last told, by default)."""
        if not self._bar_enabled or not self._total:
            return
        done = self._done if done is None else max(done, self._done)
        self._done = done
        running, failed, note = self._status() if self._status is not None else ((), 0, "")
        fraction = done / self._total
        filled = int(_BAR_WIDTH * fraction)
        this_run = done - self._done_at_start
        elapsed = time.monotonic() - self._started
        eta = "--:--"
        if this_run > 0 and done < self._total:
            eta = _clock(elapsed / this_run * (self._total - done))
        elif done >= self._total:
            eta = "done"
        graphic = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
        parts = [f"{done}/{self._total} done", *([f"{failed} failed"] if failed else [])]
        parts.append(note or f"{_clock(elapsed)} elapsed, ETA {eta}")
        count = [] if note or not running else [f"running: {len(running)}"]
        names = count if len(running) > _NAMES else [f"running: {', '.join(running)}"] if count else []
        text = _fit(self._width() - 1, graphic, parts, names, count)
        with self._lock:
            self._clear_bar()
            self._bar_text = text
            self._draw_bar()

    def _width(self) -> int:
        """The terminal's width now (it may be resized), from the stream the bar is drawn on."""
        try:
            columns = os.get_terminal_size(self._err.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        return columns or shutil.get_terminal_size((100, 24)).columns  # a new pty says 0 until sized

    def stop_bar(self) -> None:
        """Leave the terminal's last line clean."""
        self._ticking.set()
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


def _fit(width: int, graphic: str, parts: list[str], names: list[str], count: list[str]) -> str:
    """The bar's line in *width* columns: the running evals' names give way to their count, then
    the graphic bar goes; only then is the line cut (a stop's message stays whole where it can).
    """
    for text in (
        graphic + " | ".join(parts + names),
        graphic + " | ".join(parts + count),
        " | ".join(parts + count),
        " | ".join(parts),
    ):
        if len(text) <= width:
            return text
    return text[: max(width - 3, 0)] + "..."
