"""The in-process backend: a chDB session on a data directory (see pipeline.clickhouse)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.clickhouse.client import ChdbInUseError, ClickHouseClient, ClickHouseError, QueryResult
from pipeline.clickhouse.sql import (
    IDENTIFIER,
    bind_parameters,
    json_each_row,
    quote_identifier,
    quote_literal,
    settings_clause,
    split_top_level,
)


class ChdbClient(ClickHouseClient):
    """chDB session on a data directory (in-process ClickHouse engine)."""

    backend = "chdb"
    # Quoted decimals keep their precision; quoted nan/inf survive JSON.
    _RESULT_SETTINGS = (
        "SET output_format_json_quote_decimals = 1",
        "SET output_format_json_quote_denormals = 1",
        "SET output_format_json_quote_64bit_integers = 0",
        "SET output_format_json_named_tuples_as_objects = 0",
    )

    def __init__(self, path: Path | str, database: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        self.path = self.path.resolve()  # chDB compares paths literally
        self._lock = threading.RLock()
        self._database: str | None = None
        self._session = self._open()
        for statement in self._RESULT_SETTINGS:
            self._run(self._session, statement)
        self._timezone = _zone(str(self._run(self._session, "SELECT timezone()", "CSV")).strip().strip('"'))
        if database and self._exists(database):
            self.use_database(database)

    def _open(self) -> Any:
        import chdb.session

        try:
            return chdb.session.Session(str(self.path))
        except Exception as exc:
            text = str(exc)
            if "already initialized with path" in text:
                held = re.search(r"initialized with path '([^']*)'", text)
                raise ChdbInUseError(
                    f"this process already has the chDB data directory {held.group(1) if held else '?'} open; "
                    f"chDB allows one data directory per process, so {self.path} cannot be opened: "
                    "close the other ChdbClient first, or use the same LINESIGHT_STATE_DIR"
                ) from exc
            if "Error initializing EmbeddedServer" in text or "Cannot lock file" in text:
                raise ChdbInUseError(
                    f"the chDB data directory {self.path} is in use by another LineSight process{self._holder()}; "
                    "only one process can open it: stop that process, or reach the data through it, "
                    "or give this one its own LINESIGHT_STATE_DIR"
                ) from exc
            raise ClickHouseError(f"cannot open chDB at {self.path}: {text}") from exc

    def _holder(self) -> str:
        try:
            pid = re.search(r"PID:\s*(\d+)", (self.path / "status").read_text())
        except OSError:
            return ""
        return f" (pid {pid.group(1)})" if pid else ""

    def _run(self, session: Any, sql: str, fmt: str = "CSV", params: Mapping[str, Any] | None = None) -> Any:
        if session is None:
            raise ClickHouseError(f"chDB client for {self.path} is closed")
        try:
            return session.query(sql, fmt, params=bind_parameters(params) if params else None)
        except Exception as exc:
            raise ClickHouseError(f"chDB ({self.path}): {exc}") from exc

    def _exists(self, database: str) -> bool:
        result = self.query("SELECT count() FROM system.databases WHERE name = {db:String}", {"db": database})
        return bool(result.scalar())

    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            if not settings:
                self._run(self._session, sql)
                return
            # Settings are per chDB connection: apply them on a short-lived one.
            import chdb.session

            temp = chdb.session.Session(str(self.path))
            try:
                if self._database:
                    self._run(temp, f"USE {quote_identifier(self._database)}")
                for key, value in settings.items():
                    if not IDENTIFIER.match(key):
                        raise ValueError(f"not a ClickHouse setting name: {key!r}")
                    self._run(temp, f"SET {key} = {quote_literal(value)}")
                self._run(temp, sql)
            finally:
                temp.close()

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        with self._lock:
            raw = self._run(self._session, sql, "JSONCompact", parameters)
        text = raw.bytes().decode() if hasattr(raw, "bytes") else str(raw)
        if not text.strip():
            return QueryResult((), [])
        doc = json.loads(text)
        meta = doc.get("meta", [])
        names = tuple(m["name"] for m in meta)
        converters = [_converter(m["type"], self._timezone) for m in meta]
        rows = [tuple(conv(v) for conv, v in zip(converters, row, strict=False)) for row in doc.get("data", [])]
        return QueryResult(names, rows)

    def insert_json_rows(
        self, table: str, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any] | None = None
    ) -> int:
        if not rows:
            return 0
        sql = f"INSERT INTO {quote_identifier(table)}{settings_clause(settings)} FORMAT JSONEachRow\n"
        body = json_each_row(rows)
        with self._lock:
            self._run(self._session, sql + body)
        return len(rows)

    def use_database(self, database: str) -> None:
        with self._lock:
            self._run(self._session, f"USE {quote_identifier(database)}")
            self._database = database

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None


# JSONCompact text -> Python values, driven by the column type.

_Conv = Any  # Callable[[Any], Any]; kept loose for nested closures


def _parse_datetime(text: str, tz: Any) -> datetime:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=tz)


def _zone(name: str) -> Any:
    return UTC if name in ("UTC", "Etc/UTC", "Etc/Universal", "Universal", "Zulu") else ZoneInfo(name)


def _float(v: Any) -> Any:
    return float(v) if isinstance(v, str) else v


def _converter(type_name: str, session_tz: Any) -> _Conv:
    t = type_name.strip()
    head, _, rest = t.partition("(")
    inner = rest[:-1] if rest.endswith(")") else ""
    args = split_top_level(inner) if inner else []
    if head in ("LowCardinality", "SimpleAggregateFunction"):
        return _converter(args[-1], session_tz)
    if head == "Nullable":
        conv = _converter(args[0], session_tz)
        return lambda v: None if v is None else conv(v)
    if head in ("DateTime", "DateTime64"):
        tz_arg = [a for a in args if a.startswith("'")]
        tz = _zone(tz_arg[0].strip("'")) if tz_arg else session_tz
        return lambda v: _parse_datetime(v, tz)
    if head in ("Date", "Date32"):
        return date.fromisoformat
    if head.startswith("Decimal"):
        return lambda v: Decimal(str(v))
    if head.startswith(("Float", "BFloat")):
        return _float
    if head.startswith(("Int", "UInt")):
        return int
    if head == "Bool":
        return bool
    if head == "UUID":
        return uuid.UUID
    if head == "Array":
        conv = _converter(args[0], session_tz)
        return lambda v: [conv(x) for x in v]
    if head == "Map":
        kconv, vconv = _converter(args[0], session_tz), _converter(args[1], session_tz)
        return lambda v: {kconv(k): vconv(x) for k, x in v.items()}
    if head == "Tuple":
        convs = [_converter(_tuple_element_type(a), session_tz) for a in args]
        return lambda v: tuple(c(x) for c, x in zip(convs, v.values() if isinstance(v, dict) else v, strict=False))
    return lambda v: v


def _tuple_element_type(arg: str) -> str:
    """``name Type`` (named tuple element) -> ``Type``: a bare type has no space outside parens."""
    depth = 0
    for i, ch in enumerate(arg):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == " " and depth == 0:
            return arg[i + 1 :].strip()
    return arg

