"""The server backend: a ClickHouse server over HTTP with clickhouse-connect (production)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from pipeline.clickhouse.client import ClickHouseClient, ClickHouseError, QueryResult
from pipeline.clickhouse.sql import json_each_row, quote_identifier


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

