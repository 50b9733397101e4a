"""Cluster DDL: the single-node schema (infra/clickhouse/schema.sql) as replicated, sharded tables.

A ClickHouse cluster (docs/scale.md, infra/k8s/clickhouse) gets the same tables from the same
script, rewritten statement by statement, so the two cannot drift:

- every ``CREATE TABLE {db}.t`` becomes a local table ``{db}.t_local ON CLUSTER`` with the same
  columns, sorting key and partitioning, on ``ReplicatedReplacingMergeTree`` (``ReplicatedMergeTree``
  for the one plain ``MergeTree``, the audit trail, which must keep duplicates visible), replica path
  ``/clickhouse/tables/{shard}/{database}/{table}`` and replica ``{replica}`` (macros the Altinity
  operator defines on every pod); plus a ``Distributed`` table under the original name, so the
  services' queries and inserts (``{db}.inspections``) run unchanged against the whole cluster;
- the Distributed tables shard by ``SHARDING_KEYS``: a hash of columns of the table's sorting key,
  so every row a ``ReplacingMergeTree`` may collapse (same sorting key: a redelivered result) lands
  on the same shard and ``FINAL`` stays exact; the unit tables all hash ``(site, line, unit_id)``, so
  one unit's inspections, station verdicts, gate event, actuation and reject image share a shard
  (``site``, the plant, first: a central copy's plants repeat line and unit ids);
- every ``ALTER`` runs ``ON CLUSTER`` on the local table, and its column changes also on the
  Distributed table (a sorting-key change or a data-skipping index only on the local one: a
  Distributed table stores nothing to index);
- views run ``ON CLUSTER`` over the Distributed tables.

``python -m pipeline.clickhouse.cluster`` prints the script (infra/clickhouse/cluster-schema.sql is
its committed output for review); ``python -m pipeline.clickhouse.cluster --apply`` runs it against
``LINESIGHT_CLICKHOUSE__URL`` as the configured (admin) account: the Kubernetes db-init Job. On a
cluster, never run ``linesight db init`` (the single-node script): its ``MODIFY ORDER BY`` is not
valid on a Distributed table.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.clickhouse.sql import SCHEMA_PATH, quote_identifier, schema_statements, split_top_level

CLUSTER = "linesight"
LOCAL_SUFFIX = "_local"
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"

# Distributed sharding key per table: columns of the table's sorting key only (a test checks it),
# so every row a ReplacingMergeTree may replace is on one shard. A new table fails
# cluster_statements until it has a key here.
SHARDING_KEYS: dict[str, tuple[str, ...]] = {
    "inspections": ("site", "line", "unit_id"),
    "unit_verdicts": ("site", "line", "unit_id"),
    "actuations": ("site", "line", "unit_id"),
    "ground_truth": ("site", "line", "unit_id"),
    "shadow_inspections": ("site", "line", "unit_id"),
    "gate_events": ("site", "line", "unit_id"),
    "reject_images": ("site", "line", "unit_id"),
    "dead_letters": ("site", "source"),
    "challenge_runs": ("site", "line", "lot"),
    "alarms": ("alarm_id",),
    "alerts": ("site", "alert_id"),
    # One chain per shard: a chain's records (and any duplicate of one) stay together.
    "audit_records": ("chain",),
    "users": ("username",),
    "sessions": ("token_sha256",),
    "review_decisions": ("site", "lot", "unit_id"),
    "review_samples": ("lot",),
}

_CREATE_DB = re.compile(r"CREATE DATABASE IF NOT EXISTS (\w+)", re.S)
_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\s*\(", re.S)
_CREATE_VIEW = re.compile(r"CREATE VIEW IF NOT EXISTS (\w+)\.(\w+)\s+AS\s", re.S)
_ALTER = re.compile(r"ALTER TABLE (\w+)\.(\w+)\s+(.*)", re.S)
_PARSE_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)(?: ON CLUSTER \w+)?\s*\(", re.S)
_ENGINE = re.compile(r"ENGINE\s*=\s*(MergeTree|ReplacingMergeTree)\b(\s*\(([^()]*)\))?")
_ORDER_BY = re.compile(r"\bORDER BY\s+(\([^()]*\)|\w+)")
_COLUMN_COMMAND = re.compile(r"(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.I)
_ADD_COLUMN = re.compile(r"ADD COLUMN (?:IF NOT EXISTS )?(\w+)\s+(.*?)(?:\s+(AFTER)\s+(\w+)|\s+(FIRST))?$", re.S)
_MODIFY_ORDER = re.compile(r"MODIFY ORDER BY\s+(.*)$", re.S)
_DISTRIBUTED_AS = re.compile(
    r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+) ON CLUSTER (\w+) AS (\w+)\.(\w+)\s+"
    r"ENGINE = Distributed\('(\w+)', '(\w+)', '(\w+)', (.*)\)$",
    re.S,
)


class ClusterSchemaError(ValueError):
    """A schema statement the generator has no rule for: decide one here before it ships."""


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ClusterSchemaError(f"unbalanced parentheses in: {text[:80]}")


def _replicated_engine(rest: str, table: str) -> str:
    match = _ENGINE.search(rest)
    if not match:
        raise ClusterSchemaError(f"table {table}: no MergeTree/ReplacingMergeTree engine to replicate")
    args = [f"'{REPLICA_PATH}'", f"'{REPLICA_NAME}'"]
    if match.group(3) and match.group(3).strip():
        args.append(match.group(3).strip())
    engine = f"ENGINE = Replicated{match.group(1)}({', '.join(args)})"
    rest = rest[: match.start()] + engine + rest[match.end() :]
    # The single-node insert-deduplication window (sink retries carry insert_deduplication_token)
    # is the replicated one here, same size.
    return rest.replace("non_replicated_deduplication_window", "replicated_deduplication_window")


def _local(table: str) -> str:
    return table + LOCAL_SUFFIX


def cluster_statements(
    database: str, cluster: str = CLUSTER, schema_path: Path = SCHEMA_PATH
) -> list[str]:
    """The single-node schema's statements rewritten for ``cluster`` (see the module docstring)."""
    quote_identifier(cluster)  # a plain identifier, else ValueError
    out: list[str] = []
    tables: set[str] = set()
    for statement in schema_statements(database, schema_path):
        if m := _CREATE_DB.fullmatch(statement):
            out.append(f"CREATE DATABASE IF NOT EXISTS {m.group(1)} ON CLUSTER {cluster}")
        elif m := _CREATE_TABLE.match(statement):
            db, table = m.group(1), m.group(2)
            if table not in SHARDING_KEYS:
                raise ClusterSchemaError(f"table {table} has no sharding key in SHARDING_KEYS")
            close = _matching_paren(statement, m.end() - 1)
            columns = statement[m.end() - 1 : close + 1]
            rest = _replicated_engine(statement[close + 1 :], table)
            out.append(f"CREATE TABLE IF NOT EXISTS {db}.{_local(table)} ON CLUSTER {cluster}\n{columns}{rest}")
            key = ", ".join(SHARDING_KEYS[table])
            out.append(
                f"CREATE TABLE IF NOT EXISTS {db}.{table} ON CLUSTER {cluster} AS {db}.{_local(table)}\n"
                f"ENGINE = Distributed('{cluster}', '{db}', '{_local(table)}', cityHash64({key}))"
            )
            tables.add(table)
        elif m := _ALTER.fullmatch(statement):
            db, table, commands = m.group(1), m.group(2), m.group(3)
            if table not in tables:
                raise ClusterSchemaError(f"ALTER of {table} before its CREATE")
            out.append(f"ALTER TABLE {db}.{_local(table)} ON CLUSTER {cluster} {commands}")
            parts = split_top_level(commands)
            column_commands = [c for c in parts if _COLUMN_COMMAND.match(c)]
            others = [c for c in parts if not _COLUMN_COMMAND.match(c)]
            for command in others:
                if not command.upper().startswith(("MODIFY ORDER BY", "ADD INDEX")):
                    raise ClusterSchemaError(f"ALTER {table}: no cluster rule for {command!r}")
            if column_commands:
                out.append(f"ALTER TABLE {db}.{table} ON CLUSTER {cluster} {', '.join(column_commands)}")
        elif m := _CREATE_VIEW.match(statement):
            db, view = m.group(1), m.group(2)
            out.append(f"CREATE VIEW IF NOT EXISTS {db}.{view} ON CLUSTER {cluster} AS {statement[m.end():]}")
        else:
            raise ClusterSchemaError(f"no cluster rule for statement: {statement.splitlines()[0]}")
    return out


def cluster_script(database: str = "linesight", cluster: str = CLUSTER, schema_path: Path = SCHEMA_PATH) -> str:
    head = (
        "-- GENERATED by `python -m pipeline.clickhouse.cluster` from infra/clickhouse/schema.sql: do not edit.\n"
        f"-- The LineSight schema on ClickHouse cluster '{cluster}' (database {database}): replicated local\n"
        "-- tables (<table>_local) and Distributed tables under the single-node names. docs/scale.md.\n\n"
    )
    body = "".join(s + ";\n\n" for s in cluster_statements(database, cluster, schema_path))
    # The single-node script's end-of-line comments are gone (split_statements drops them): no trailing blanks.
    return head + re.sub(r"[ \t]+\n", "\n", body).rstrip("\n") + "\n"


# ---------------------------------------------------------------- parsing (tests, review)


@dataclass
class TableShape:
    """What a table's DDL says, after every ALTER of the script."""

    columns: list[tuple[str, str]] = field(default_factory=list)  # (name, declaration)
    order_by: str = ""
    engine: str = ""
    distributed: tuple[str, str, str] | None = None  # (cluster, database, local table) for a Distributed
    sharding_key: str = ""
    as_table: str = ""


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _add_column(shape: TableShape, command: str) -> None:
    m = _ADD_COLUMN.match(_norm(command))
    if not m:
        raise ClusterSchemaError(f"cannot parse {command!r}")
    name, decl = m.group(1), _norm(m.group(2))
    if any(n == name for n, _ in shape.columns):
        return  # IF NOT EXISTS
    if m.group(3):
        at = [n for n, _ in shape.columns].index(m.group(4)) + 1
    elif m.group(5):
        at = 0
    else:
        at = len(shape.columns)
    shape.columns.insert(at, (name, decl))


def table_shapes(statements: list[str]) -> dict[str, TableShape]:
    """Each table's columns, sorting key and engine as the statements leave them (both scripts)."""
    shapes: dict[str, TableShape] = {}
    for statement in statements:
        statement = _norm(statement)
        if m := _DISTRIBUTED_AS.match(statement):
            source = shapes[m.group(5)]
            shapes[m.group(2)] = TableShape(
                columns=list(source.columns),
                engine="Distributed",
                distributed=(m.group(6), m.group(7), m.group(8)),
                sharding_key=m.group(9),
                as_table=m.group(5),
            )
        elif m := _PARSE_CREATE_TABLE.match(statement):
            close = _matching_paren(statement, m.end() - 1)
            shape = TableShape()
            for item in split_top_level(statement[m.end() : close]):
                if item.upper().startswith(("INDEX ", "PROJECTION ", "CONSTRAINT ")):
                    continue
                name, _, decl = item.partition(" ")
                shape.columns.append((name, _norm(decl)))
            rest = statement[close + 1 :]
            shape.engine = _norm(rest.split("ENGINE =", 1)[1].split(" PARTITION BY")[0].split(" ORDER BY")[0])
            order = _ORDER_BY.search(rest)
            shape.order_by = order.group(1) if order else ""
            shapes[m.group(2)] = shape
        elif m := _ALTER.match(statement):
            table, commands = m.group(2), m.group(3)
            commands = re.sub(r"^ON CLUSTER \w+ ", "", commands)
            for command in split_top_level(commands):
                if command.upper().startswith("ADD COLUMN"):
                    _add_column(shapes[table], command)
                elif om := _MODIFY_ORDER.match(command):
                    shapes[table].order_by = om.group(1).strip()
                elif _COLUMN_COMMAND.match(command):
                    raise ClusterSchemaError(f"the parser has no rule for {command!r}")
    return shapes


def sorting_key_columns(order_by: str) -> list[str]:
    return [c.strip() for c in order_by.strip("()").split(",") if c.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.clickhouse.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default=CLUSTER, help="the ClickHouse cluster name (remote_servers)")
    parser.add_argument("--database", help="default: LINESIGHT_CLICKHOUSE__DATABASE (linesight)")
    parser.add_argument("--apply", action="store_true", help="run the DDL against LINESIGHT_CLICKHOUSE__URL")
    args = parser.parse_args(argv)
    from pipeline.settings import Settings

    settings = Settings()
    database = args.database or settings.clickhouse.database
    if not args.apply:
        sys.stdout.write(cluster_script(database, args.cluster))
        return 0
    if not settings.clickhouse.url:
        print("error: --apply needs LINESIGHT_CLICKHOUSE__URL (a cluster node or its Service)", file=sys.stderr)
        return 2
    from pipeline.clickhouse import connect

    statements = cluster_statements(database, args.cluster)
    client = connect(settings)
    try:
        for statement in statements:
            client.command(statement)
    finally:
        client.close()
    print(f"cluster schema applied: {len(statements)} statements, database {database}, cluster {args.cluster}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
