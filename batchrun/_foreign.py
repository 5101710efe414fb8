"""Progress files that batchrun did not write: oaievalset's, which it imports, and anything else,
which it refuses to touch.

oaievalset writes one JSON argv list per completed eval, ``["oaieval", MODEL, EVAL, *extra]``.
Only lines for this run's model and extra arguments are completions of this run. A file at the
progress URI that is not such a list (notes, an eval-set YAML given as ``--progress`` by mistake)
is not imported, not rewritten, and not deleted: the run refuses to start.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from batchrun._state import Attempt, Outcome
from batchrun.errors import BadInputError

_MIN_ARGV = 3  # program, model, eval


@dataclass(frozen=True, slots=True)
class ForeignLine:
    """One oaievalset progress line: the model, eval and extra arguments it ran with."""

    model: str
    eval: str
    extra_args: tuple[str, ...]


def parse_oaievalset_line(line: str) -> ForeignLine | None:
    """The argv of one oaievalset progress line, or None if the line is not one."""
    try:
        argv = json.loads(line)
    except ValueError:
        return None
    if not isinstance(argv, list) or len(argv) < _MIN_ARGV or not all(isinstance(w, str) for w in argv):
        return None
    return ForeignLine(model=argv[1], eval=argv[2], extra_args=tuple(argv[3:]))


def parse_foreign(data: bytes) -> list[ForeignLine] | None:
    """Every line of an oaievalset progress file, or None if *data* is not one (empty is one)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines: list[ForeignLine] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        parsed = parse_oaievalset_line(raw.strip())
        if parsed is None:
            return None
        lines.append(parsed)
    return lines


def check_importable(data: bytes, uri: str) -> None:
    """Raise BadInputError unless *data* is an oaievalset progress file (or empty)."""
    if parse_foreign(data) is None:
        msg = (
            f"{uri} exists and is not a progress file (neither batchrun's, which keeps a {uri}.d/ beside it, "
            "nor oaievalset's JSON lines); it was left untouched: choose another --progress"
        )
        raise BadInputError(msg)


def imported_attempts(data: bytes, model: str | None, extra_args: Sequence[str] | None) -> list[Attempt]:
    """Oaievalset's completions for *model* with *extra_args* (any, where None) as attempt records."""
    lines = parse_foreign(data) or []
    wanted = [
        line
        for line in lines
        if (model is None or line.model == model) and (extra_args is None or line.extra_args == tuple(extra_args))
    ]
    return [
        Attempt(f"import-{i}", line.eval, 0, "imported", 0.0, outcome=Outcome.COMPLETED, ended_at=float(i), exit_code=0)
        for i, line in enumerate(wanted)
    ]
