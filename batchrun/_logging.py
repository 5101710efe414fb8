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


def configure_logging(console: Console, fmt: LogFormat = LogFormat.AUTO, *, terminal: bool) -> None:
    """Send structlog events through *console*; JSON unless *fmt* is console or stderr is a tty."""
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not terminal)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=terminal, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=console),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
