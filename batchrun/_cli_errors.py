"""How the command line ends when something goes wrong: one line on stderr, ``batchrun: error:
...``, and the documented exit code; the parser's messages in plain words; a bug's traceback as
the `run.crashed` event.
"""

from __future__ import annotations

import contextlib
import sys
from typing import NoReturn

import typer
from typer.exceptions import TyperException

from batchrun import errors
from batchrun._console import Console
from batchrun._logging import LogFormat, configure_logging

# pydantic's words for a value that is not a number, in plain ones.
_PLAIN = {
    "Input should be a valid integer": "not a whole number",
    "Input should be a valid number": "not a number",
    "Input should be a valid boolean": "not true or false",
}


def usage_message(exc: TyperException) -> str:
    """The parser's message for a bad value, naming the env var only when the value came from it
    (typer names it whenever the option has one) and without pydantic's "Value error, ".
    """
    from typer._click.core import ParameterSource  # noqa: PLC0415 - typer is pinned (pyproject.toml)
    from typer._click.exceptions import BadParameter, MissingParameter  # noqa: PLC0415

    if isinstance(exc, MissingParameter) and exc.ctx is not None:  # `batchrun run` alone, say
        return f"{exc.format_message().rstrip('.')} (see: batchrun {exc.ctx.info_name} --help)"
    if not isinstance(exc, BadParameter) or exc.param is None or exc.ctx is None:
        return exc.format_message()
    param = exc.param
    names = " / ".join(param.opts) or str(param.name).upper()
    envvar = getattr(param, "envvar", None)
    source = exc.ctx.get_parameter_source(param.name) if param.name else None
    where = f" (from {envvar})" if source is ParameterSource.ENVIRONMENT and isinstance(envvar, str) else ""
    message = exc.message.removeprefix("Value error, ")
    message = _PLAIN.get(message.split(",", 1)[0], message)
    return f"invalid value for {names}{where}: {message}"


def crashed(exc: Exception) -> NoReturn:
    """An unexpected exception: its traceback as the `run.crashed` event, then one line and exit 70."""
    import traceback  # noqa: PLC0415 - only on this path

    import structlog  # noqa: PLC0415

    if not structlog.is_configured():  # status, logs, reset, or run before it set logging up
        configure_logging(Console(), LogFormat.AUTO, terminal=sys.stderr.isatty())
    lines = str(exc).strip().splitlines()
    summary = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    with contextlib.suppress(Exception):  # the log sink itself may be what failed
        structlog.get_logger("batchrun").error("run.crashed", error=summary, exception=traceback.format_exc())
    fail(f"internal error: {summary} (please report)", errors.EXIT_INTERNAL)


def fail(message: str, code: int) -> NoReturn:
    if message:  # an empty one follows help that was already printed
        with contextlib.suppress(OSError):  # stderr's reader is gone: the exit code still tells
            typer.echo(f"batchrun: error: {message}", err=True)
    raise SystemExit(code)
