"""How the long-running commands log: text lines, or JSON lines for a log collector (``--log-format json`` or
``SHADOWGATE_LOG_FORMAT=json``).

A JSON line has ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg`` and, for an exception, ``exc``: one
object per line, nothing else on stderr. Messages never hold secrets (settings are printed masked, client
errors name settings, never values).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

__all__ = ["JsonLines", "configure_logging", "logging_config"]


class JsonLines(logging.Formatter):
    """One JSON object per record (module doc)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def configure_logging(level: int | str, log_format: str) -> None:
    """Send every logger's records to stderr as text or JSON lines (replacing handlers set before)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def logging_config(level: str, log_format: str) -> dict[str, object] | None:
    """A ``logging.config.dictConfig`` for Faust's worker (which sets logging up itself): JSON lines on stderr;
    None for text (Faust's own format)."""
    if log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonLines}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
