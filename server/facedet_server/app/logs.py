"""structlog setup: JSON lines for machines, a readable console format on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def resolved_format(fmt: str) -> str:
    """--log-format as it applies here: auto is console on a terminal, else JSON."""
    if fmt == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return fmt


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Log lines go to `stream` (default: sys.stderr as it is now)."""
    fmt = resolved_format(fmt)
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write a line: the stream is shared with other processes.
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
