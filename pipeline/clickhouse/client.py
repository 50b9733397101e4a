"""What LineSight needs from ClickHouse: the client interface, its errors and query results."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.clickhouse.sql import SCHEMA_PATH, schema_statements


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
