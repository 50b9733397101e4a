"""One small ClickHouse interface over two real engines: chDB in-process, or a ClickHouse server.

Why: on machines without Docker there is no usable ClickHouse server, but chDB is the same
engine in-process (same SQL, MergeTree, persistent directory). Production and docker-compose run
``clickhouse/clickhouse-server``, reached over HTTP with clickhouse-connect. Callers use
`connect(settings)` and never see which one they got.

Rows are inserted as JSONEachRow on both backends, so one serialisation decides what a value
means. The rule for timestamps: rows carry Python ``datetime`` objects *with a timezone* (use
`datetime_from_ns` for the epoch-nanosecond fields of the wire messages); they are written as
UTC text ``YYYY-MM-DD hh:mm:ss.ffffff``, which a ``DateTime64(6, 'UTC')`` column parses
exactly. Integers are NOT accepted as timestamps by ClickHouse's JSON input (an integer is read
as *seconds* and nanoseconds overflow), and naive datetimes are refused as ambiguous. Non-finite
floats travel as the strings ``"nan"``/``"inf"``/``"-inf"`` (JSON has no literal for them).

Query results come back as Python values on both backends: ints, floats, str, bool, None,
``Decimal``, ``UUID``, ``date``, timezone-aware ``datetime``, dict (Map), list (Array), tuple.

chDB limits, verified: one process per data directory (a second process fails to lock it), and
one data directory per process (chDB's engine is process-wide). Both raise `ChdbInUseError`.
"""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pipeline.settings import PROJECT_ROOT, Settings

SCHEMA_PATH = PROJECT_ROOT / "infra" / "clickhouse" / "schema.sql"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ClickHouseError(RuntimeError):
    """A ClickHouse statement or connection failed; the message names what and where."""


class ChdbInUseError(ClickHouseError):
    """The chDB data directory is held by another process, or this process holds another one."""


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows (tuples) of one query."""

    column_names: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def named(self) -> list[dict[str, Any]]:
        return [dict(zip(self.column_names, row, strict=False)) for row in self.rows]

    def scalar(self) -> Any:
        """The first column of the first row (None when there is no row)."""
        return self.rows[0][0] if self.rows else None

    def __len__(self) -> int:
        return len(self.rows)

    def to_table(self, max_width: int = 60) -> str:
        """A plain-text table for terminals (`linesight sql`)."""
        cells = [[str(c) for c in self.column_names]] + [
            [_cell(v, max_width) for v in row] for row in self.rows
        ]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.column_names))]
        line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip()  # noqa: E731
        rule = "  ".join("-" * w for w in widths)
        footer = f"({len(self.rows)} row{'s' if len(self.rows) != 1 else ''})"
        return "\n".join([line(cells[0]), rule, *map(line, cells[1:]), footer])


def _cell(value: Any, max_width: int) -> str:
    text = "NULL" if value is None else str(value)
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


# --------------------------------------------------------------------------- helpers


def datetime_from_ns(ns: int) -> datetime:
    """UTC datetime of an epoch-nanosecond timestamp (microsecond precision, like DateTime64(6))."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def quote_identifier(name: str) -> str:
    """Backquote ``name`` or ``db.name`` after checking it is a plain identifier."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENT.match(p) for p in parts):
        raise ValueError(f"not a plain table/database identifier: {name!r}")
    return ".".join(f"`{p}`" for p in parts)


def _quote_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def settings_clause(settings: Mapping[str, Any] | None) -> str:
    """`` SETTINGS k = v, ...`` for an INSERT (empty when there are none)."""
    if not settings:
        return ""
    for key in settings:
        if not _IDENT.match(key):
            raise ValueError(f"not a ClickHouse setting name: {key!r}")
    return " SETTINGS " + ", ".join(f"{k} = {_quote_literal(v)}" for k, v in settings.items())


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


def schema_statements(database: str, schema_path: Path = SCHEMA_PATH) -> list[str]:
    quote_identifier(database)  # validates
    return split_statements(schema_path.read_text().replace("{db}", database))


# --------------------------------------------------------------------------- interface


class ClickHouseClient(ABC):
    """What LineSight needs from ClickHouse. Qualify table names (``db.table``)."""

    backend: str = "?"

    @abstractmethod
    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns no rows (DDL, ALTER, OPTIMIZE, INSERT ... SELECT)."""

    @abstractmethod
    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        """Run a SELECT (no FORMAT clause); ``{name:Type}`` placeholders bind ``parameters``."""

    @abstractmethod
    def insert_json_rows(
        self, table: str, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any] | None = None
    ) -> int:
        """Insert rows in one INSERT (JSONEachRow); omitted columns get their defaults.

        ``settings`` e.g. ``{"insert_deduplication_token": "topic:0:100-199"}`` makes a retried
        insert of the same block a no-op on tables with a deduplication window.
        Returns the number of rows sent.
        """

    @abstractmethod
    def use_database(self, database: str) -> None:
        """Make ``database`` the default for unqualified names."""

    @abstractmethod
    def close(self) -> None: ...

    def apply_schema(self, database: str, schema_path: Path = SCHEMA_PATH) -> int:
        """Run the schema script statement by statement; return how many ran."""
        statements = schema_statements(database, schema_path)
        for statement in statements:
            try:
                self.command(statement)
            except ClickHouseError as exc:
                first_line = statement.splitlines()[0]
                raise ClickHouseError(f"schema statement failed ({first_line} ...): {exc}") from exc
        self.use_database(database)
        return len(statements)

    def __enter__(self) -> ClickHouseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- chDB


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
            return session.query(sql, fmt, params=dict(params) if params else None)
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
                    if not _IDENT.match(key):
                        raise ValueError(f"not a ClickHouse setting name: {key!r}")
                    self._run(temp, f"SET {key} = {_quote_literal(value)}")
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


def _split_type_args(inner: str) -> list[str]:
    args, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(inner):
        if quote:
            if ch == quote and inner[i - 1] != "\\":
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
    args.append(inner[start:].strip())
    return [a for a in args if a]


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
    args = _split_type_args(inner) if inner else []
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


# --------------------------------------------------------------------------- server


class ServerClient(ClickHouseClient):
    """A ClickHouse server over HTTP(S) through clickhouse-connect."""

    backend = "server"

    def __init__(self, url: str, database: str | None = None, username: str = "default", password: str = "") -> None:
        import clickhouse_connect

        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClickHouseError(f"ClickHouse URL must be http(s)://host:port, got {url!r}")
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or (8443 if parts.scheme == 'https' else 8123)}"
        try:
            self._client = clickhouse_connect.get_client(
                host=parts.hostname,
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                interface=parts.scheme,
                username=username,
                password=password,
                tz_mode="aware",
                autogenerate_session_id=False,
            )
        except Exception as exc:
            raise ClickHouseError(f"cannot connect to ClickHouse at {self.url}: {exc}") from exc
        if database and self._exists(database):
            self.use_database(database)

    def _exists(self, database: str) -> bool:
        result = self.query("SELECT count() FROM system.databases WHERE name = {db:String}", {"db": database})
        return bool(result.scalar())

    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        try:
            self._client.command(sql, settings=dict(settings) if settings else None)
        except Exception as exc:
            raise ClickHouseError(f"ClickHouse {self.url}: {exc}") from exc

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        try:
            result = self._client.query(sql, parameters=dict(parameters) if parameters else None)
        except Exception as exc:
            raise ClickHouseError(f"ClickHouse {self.url}: {exc}") from exc
        return QueryResult(tuple(result.column_names), [tuple(r) for r in result.result_rows])

    def insert_json_rows(
        self, table: str, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any] | None = None
    ) -> int:
        if not rows:
            return 0
        try:
            self._client.raw_insert(
                quote_identifier(table),
                insert_block=json_each_row(rows).encode(),
                settings=dict(settings) if settings else None,
                fmt="JSONEachRow",
            )
        except Exception as exc:
            raise ClickHouseError(f"ClickHouse {self.url}: insert into {table} failed: {exc}") from exc
        return len(rows)

    def use_database(self, database: str) -> None:
        quote_identifier(database)
        self._client.database = database

    def close(self) -> None:
        self._client.close()


def connect(settings: Settings) -> ClickHouseClient:
    """A ClickHouse server when ``clickhouse.url`` is set, else chDB in ``settings.chdb_dir``."""
    ch = settings.clickhouse
    if ch.url:
        return ServerClient(ch.url, ch.database, ch.username, ch.resolved_password())
    return ChdbClient(settings.chdb_dir, ch.database)
