"""Logging set-up: readable console lines by default, JSON lines for machines (``--log-json``)."""

from __future__ import annotations

import logging
import sys

import structlog
import tqdm


class _AboveProgressBars:
    """A stderr stand-in that prints log lines above any live tqdm bar instead of through it."""

    def write(self, text: str) -> None:
        if text.strip():
            tqdm.tqdm.write(text.rstrip("\n"), file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(json: bool = False, level: str = "info") -> None:
    """Route structlog (and stdlib logging) to stderr in the chosen format."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="%H:%M:%S" if not json else "iso"),
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=processors + [renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=_AboveProgressBars()),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "rlgen") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
