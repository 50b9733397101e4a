"""One small ClickHouse interface over two real engines: chDB in-process, or a ClickHouse server.

Why: on machines without Docker there is no usable ClickHouse server, but chDB is the same
engine in-process (same SQL, MergeTree, persistent directory). Production and docker-compose run
``clickhouse/clickhouse-server``, reached over HTTP with clickhouse-connect. Callers use
`connect(settings)` and never see which one they got.

Rows are inserted as JSONEachRow on both backends, so one serialisation decides what a value
means. The rule for timestamps: rows carry Python ``datetime`` objects *with a timezone* (use
`pipeline.core.times.datetime_from_ns` for the epoch-nanosecond fields of the wire messages); they are written as
UTC text ``YYYY-MM-DD hh:mm:ss.ffffff``, which a ``DateTime64(6, 'UTC')`` column parses
exactly. Integers are NOT accepted as timestamps by ClickHouse's JSON input (an integer is read
as *seconds* and nanoseconds overflow), and naive datetimes are refused as ambiguous. Non-finite
floats travel as the strings ``"nan"``/``"inf"``/``"-inf"`` (JSON has no literal for them).

Query results come back as Python values on both backends: ints, floats, str, bool, None,
``Decimal``, ``UUID``, ``date``, timezone-aware ``datetime``, dict (Map), list (Array), tuple.

chDB limits, verified: one process per data directory (a second process fails to lock it), and
one data directory per process (chDB's engine is process-wide). Both raise `ChdbInUseError`.

The package: `sql` (SQL text and JSONEachRow bodies), `client` (the interface, errors, results),
`chdb_backend` and `server_backend` (the two engines); callers import from here.
"""

from __future__ import annotations

from pipeline.clickhouse.chdb_backend import ChdbClient
from pipeline.clickhouse.client import ChdbInUseError, ClickHouseClient, ClickHouseError, QueryResult
from pipeline.clickhouse.server_backend import ServerClient
from pipeline.clickhouse.sql import (
    SCHEMA_PATH,
    SITE_TABLES,
    json_each_row,
    quote_identifier,
    schema_statements,
    settings_clause,
    split_statements,
)
from pipeline.settings import Settings

__all__ = [
    "SCHEMA_PATH",
    "SITE_TABLES",
    "ChdbClient",
    "ChdbInUseError",
    "ClickHouseClient",
    "ClickHouseError",
    "QueryResult",
    "ServerClient",
    "connect",
    "json_each_row",
    "quote_identifier",
    "schema_statements",
    "settings_clause",
    "split_statements",
]


def connect(settings: Settings) -> ClickHouseClient:
    """A ClickHouse server when ``clickhouse.url`` is set, else chDB in ``settings.chdb_dir``."""
    ch = settings.clickhouse
    if ch.url:
        return ServerClient(ch.url, ch.database, ch.username, ch.resolved_password())
    return ChdbClient(settings.chdb_dir, ch.database)
