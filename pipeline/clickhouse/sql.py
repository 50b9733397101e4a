"""SQL text and JSONEachRow bodies as both backends write them (rules in pipeline.clickhouse)."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.binding import format_bind_value

from pipeline.settings import PROJECT_ROOT

SCHEMA_PATH = PROJECT_ROOT / "infra" / "clickhouse" / "schema.sql"
# The tables with a `site` column (every table with a `line`, schema.sql): their writers stamp the
# `site` setting on each row. tests/unit/test_cluster_schema.py checks the list against the schema.
SITE_TABLES = frozenset({
    "inspections", "unit_verdicts", "actuations", "ground_truth", "shadow_inspections", "dead_letters",
    "gate_events", "challenge_runs", "alerts", "reject_images", "review_decisions",
})

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def quote_identifier(name: str) -> str:
    """Backquote ``name`` or ``db.name`` after checking it is a plain identifier."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(IDENTIFIER.match(p) for p in parts):
        raise ValueError(f"not a plain table/database identifier: {name!r}")
    return ".".join(f"`{p}`" for p in parts)


def quote_literal(value: Any) -> str:
    """A SETTINGS/SET value as SQL text: numbers bare, booleans 0/1, anything else quoted."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def bind_parameters(parameters: Mapping[str, Any]) -> dict[str, str]:
    """Values for ``{name:Type}`` placeholders as the text ClickHouse parses for them.

    ClickHouse reads a query parameter in its *escaped* text format: a raw backslash starts an
    escape sequence, so an unescaped ``ott\\x6f`` would bind as ``otto`` and a trailing backslash
    would fail the query. The rendering is clickhouse-connect's, the one the server backend sends,
    so a value binds alike on both backends.
    """
    return {name: str(format_bind_value(value)) for name, value in parameters.items()}


def settings_clause(settings: Mapping[str, Any] | None) -> str:
    """`` SETTINGS k = v, ...`` for an INSERT (empty when there are none)."""
    if not settings:
        return ""
    for key in settings:
        if not IDENTIFIER.match(key):
            raise ValueError(f"not a ClickHouse setting name: {key!r}")
    return " SETTINGS " + ", ".join(f"{k} = {quote_literal(v)}" for k, v in settings.items())


def _jsonable(value: Any) -> Any:
    """A value JSONEachRow input reads back as the intended ClickHouse value (see module doc)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} is ambiguous: give it a timezone (UTC)")
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    raise TypeError(f"cannot write a {type(value).__name__} to ClickHouse: {value!r}")


def json_each_row(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as a JSONEachRow body (one JSON object per line)."""
    return "\n".join(
        json.dumps({k: _jsonable(v) for k, v in row.items()}, separators=(",", ":"), allow_nan=False)
        for row in rows
    )


def split_statements(sql: str) -> list[str]:
    """Split a script on ``;`` outside quotes and comments; comments are dropped."""
    statements: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if ch in "'\"`":
            j = i + 1
            while j < n and sql[j] != ch:
                j += 2 if sql[j] == "\\" else 1
            buf.append(sql[i : j + 1])
            i = j + 1
            continue
        if ch == ";":
            statements.append("".join(buf).strip())
            buf = []
        else:
            buf.append(ch)
        i += 1
    statements.append("".join(buf).strip())
    return [s for s in statements if s]


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside parentheses and quotes (a backslash-escaped quote stays inside):
    a column list, a type's arguments, an ALTER's commands. Empty parts are dropped."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def schema_statements(database: str, schema_path: Path = SCHEMA_PATH) -> list[str]:
    """The schema script's statements for `database` (a plain identifier, else ValueError)."""
    quote_identifier(database)  # validates
    return split_statements(schema_path.read_text().replace("{db}", database))
