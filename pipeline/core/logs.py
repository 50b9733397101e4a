"""Log output of every `linesight` command: text for a person, or one JSON object a line.

Why JSON: in production a log collector indexes the logs, and a unit's fate (fail-safe reject,
dead letter, fire) must be findable by its unit id and lot. Calls that concern a unit pass them
as ``extra={"unit_id": ..., "lot": ..., "line": ...}``; the JSON formatter writes those fields,
the text formatter the message alone. One `logging.config.dictConfig` document serves both the
plain commands and the Faust worker (which replaces the root logger's handlers with its own).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields taken from a record's `extra` when present.
UNIT_FIELDS = ("unit_id", "lot", "line")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601, ms), level, logger, message, service, the
    unit fields a call passed, and the exception's traceback as ``exc``."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        for name in UNIT_FIELDS:
            value = record.__dict__.get(name)
            if value not in (None, ""):
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, default=str, ensure_ascii=False)


def logging_config(fmt: str, service: str, level: str | int = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` document: the root logger to stderr, as ``fmt`` ("text" or
    "json", `LogSettings.format`) says."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: text or json")
    formatter: dict[str, Any] = {"()": JsonFormatter, "service": service} if fmt == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"linesight": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "linesight",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper() if isinstance(level, str) else level, "handlers": ["stderr"]},
    }
