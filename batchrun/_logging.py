"""structlog, configured once: JSON lines off a terminal (Kubernetes), readable lines on one.

Every JSON line carries ``"logger": "batchrun"``, and while logging JSON the console labels eval
output that could pass for such a line, so a line that parses as JSON with that field is batchrun's.
"""

from __future__ import annotations

import enum
import logging

import structlog

from batchrun._console import Console


class LogFormat(enum.StrEnum):
    """--log-format values."""

    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


_RUN_FIELDS = ("model", "eval_set", "progress", "worker")


def _drop_run_fields(_logger: object, _method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """On a terminal, say the run's fields once (run.* events), not on every eval's line."""
    if not str(event.get("event", "")).startswith("run."):
        for key in _RUN_FIELDS:
            event.pop(key, None)
    return event


def _add_logger(_logger: object, _method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """Tell batchrun's lines from the evals' output beside them (which can't carry this field)."""
    event["logger"] = "batchrun"
    return event


def _drop_command(_logger: object, _method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """On a terminal, an eval's started line names the eval; its full argv only with --verbose."""
    event.pop("command", None)
    return event


def configure_logging(
    console: Console, fmt: LogFormat = LogFormat.AUTO, *, terminal: bool, verbose: bool = False
) -> None:
    """Send structlog events through *console*; JSON unless *fmt* is console or stderr is a tty.
    Readable lines are short: local time of day, and no argv unless *verbose*.
    """
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not terminal)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=terminal, exception_formatter=structlog.dev.plain_traceback)
    )
    terse: list[structlog.typing.Processor] = [_add_logger] if use_json else [_drop_run_fields]
    if not use_json and not verbose:
        terse.append(_drop_command)
    stamp = (
        structlog.processors.TimeStamper(fmt="iso", utc=True)
        if use_json or verbose
        else structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False)
    )
    console.guard_json = use_json
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            stamp,
            *terse,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=console),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
