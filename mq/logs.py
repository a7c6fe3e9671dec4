"""Process-wide log setup for the servers: structlog, JSON lines unless on a terminal.

Called once by an entry point (never on import), so tests and embedding applications
keep whatever logging they configured.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(
    level: str = "info", *, json: bool | None = None, drop: frozenset[str] = frozenset()
) -> None:
    """Log events at `level` and above to stderr, except the events named in `drop`.
    `json` defaults to "stderr is not a TTY": machines read JSON lines, people read the
    console renderer."""
    if json is None:
        json = not sys.stderr.isatty()

    def drop_named(_logger: object, _method: str, event: structlog.typing.EventDict) -> Any:
        if event.get("event") in drop:
            raise structlog.DropEvent
        return event

    processors: list[structlog.typing.Processor] = [
        *([drop_named] if drop else []),
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
