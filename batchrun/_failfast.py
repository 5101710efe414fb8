"""Fail-fast: a run whose command is broken for every eval stops after a few quick attempts, instead
of spending the retry backoff on every eval of the set.

The first attempt each eval gets from this process is a probe. A probe that fails within
:data:`FAST_S` goes back to the scheduler (its retry waits out the backoff meanwhile), so the
next eval's probe runs at once. When the first :data:`PROBES` probes to end all failed within
:data:`FAST_S`, with one exit code and one last output line (the eval's own name aside), the run
stops and says so; any other first ending (a completion, a slow or different failure) settles it
the other way for the rest of the run. Sets with fewer than :data:`PROBES` evals to run never
stop early. ``--no-fail-fast`` turns this off.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

FAST_S = 1.0
PROBES = 3
MAX_LINE = 200  # of the last line, in the verdict


@dataclass(frozen=True, slots=True)
class Ending:
    """How a probe ended: *failed* with *exit_code* and *last_line* after *duration* seconds."""

    eval: str
    failed: bool
    exit_code: int | None
    last_line: str
    duration: float

    @property
    def fast_failure(self) -> bool:
        return self.failed and self.duration < FAST_S

    def signature(self) -> tuple[int | None, str]:
        """What the failures must share: the exit code and the last line, with the eval's name as
        ``{eval}`` (``unknown eval 'a'`` and ``unknown eval 'b'`` are one way to fail).
        """
        alone = rf"(?<!\w){re.escape(self.eval)}(?!\w)"  # as a word: tasks/NAME.py, evals.NAME, NAME-v2
        return self.exit_code, re.sub(alone, "{eval}", self.last_line)


class FailFast:
    """Watches the probes of one run; thread-safe."""

    def __init__(self, *, enabled: bool) -> None:
        """Armed when *enabled*, until :meth:`expect` hears of too few evals or an ending decides."""
        self._lock = threading.Lock()
        self._armed = enabled
        self._probed: set[str] = set()
        self._fast: list[Ending] = []
        self.verdict: str | None = None  # why the run stops early, once it does
        self.evidence: tuple[Ending, ...] = ()  # the probes that decided it

    def expect(self, evals_to_run: int) -> None:
        """How many evals this run has to run: fewer than :data:`PROBES` never stop early."""
        with self._lock:
            self._armed = self._armed and evals_to_run >= PROBES

    def is_probe(self, eval_name: str) -> bool:
        """Whether the attempt starting now is *eval_name*'s first from this process."""
        with self._lock:
            return eval_name not in self._probed

    def ended(self, ending: Ending, *, probe: bool) -> str | None:
        """Count an attempt's end; the verdict when this ending decides that the run stops."""
        with self._lock:
            if probe:
                self._probed.add(ending.eval)
            if not probe or not self._armed:
                return None
            if not ending.fast_failure:
                self._armed = False  # the command works for some eval, or fails some other way
                return None
            self._fast.append(ending)
            if len(self._fast) < PROBES:
                return None
            self._armed = False
            if len({e.signature() for e in self._fast}) > 1:
                return None
            self.verdict, self.evidence = _verdict(self._fast), tuple(self._fast)
            return self.verdict

    def withdraw(self) -> None:
        """Forget the verdict: a stop signal came first, and it decides how the run ends."""
        with self._lock:
            self.verdict = None

    def hold_back(self, ending: Ending, *, probe: bool) -> bool:
        """Whether a failed probe's retry should wait in the queue, so other evals' probes run
        first (while the verdict is still open).
        """
        with self._lock:
            return probe and self._armed and ending.fast_failure


def _verdict(fast: list[Ending]) -> str:
    names = ", ".join(e.eval for e in fast)
    code, line = fast[0].signature()
    how = "no exit code" if code is None else f"killed by signal {-code}" if code < 0 else f"exit {code}"
    said = f", last line {line[:MAX_LINE]!r}" if line else ", no output"
    return (
        f"stopped early: the first attempts of {names} all failed within {FAST_S:g} s the same way "
        f"({how}{said}); fix the command and run again, or pass --no-fail-fast"
    )
