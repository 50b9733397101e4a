"""How services write their logs (docs/observability.md, "Logs")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class LogSettings(BaseModel):
    """``text`` for a person at a terminal; ``json`` (compose) for a log collector: one object a
    line with time, level, logger, message, service and, where the call names one, unit_id, lot
    and line. ``linesight --log-format`` overrides it for one command."""

    format: Literal["text", "json"] = "text"
