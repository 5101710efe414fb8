"""structlog, configured once: JSON lines off a terminal (Kubernetes), readable lines on one."""

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


def configure_logging(console: Console, fmt: LogFormat = LogFormat.AUTO, *, terminal: bool) -> None:
    """Send structlog events through *console*; JSON unless *fmt* is console or stderr is a tty."""
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not terminal)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=terminal, exception_formatter=structlog.dev.plain_traceback)
    )
    terse: list[structlog.typing.Processor] = [] if use_json else [_drop_run_fields]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *terse,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=console),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
