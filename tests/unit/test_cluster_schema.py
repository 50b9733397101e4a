"""The ClickHouse cluster DDL (pipeline/clickhouse/cluster.py) against the single-node schema it is
generated from: every table has its replicated local table and its Distributed table with the same
columns and sorting key, the sharding keys keep ReplacingMergeTree duplicates on one shard, and
ClickHouse's own parser (chDB) accepts every generated statement."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.clickhouse.chdb_backend import ChdbClient
from pipeline.clickhouse.cluster import (
    CLUSTER,
    LOCAL_SUFFIX,
    SHARDING_KEYS,
    ClusterSchemaError,
    cluster_script,
    cluster_statements,
    sorting_key_columns,
    table_shapes,
)
from pipeline.clickhouse.sql import SCHEMA_PATH, SITE_TABLES, schema_statements, split_top_level
from pipeline.settings import PROJECT_ROOT, Settings

DB = "linesight"


def _single() -> dict:
    return table_shapes(schema_statements(DB))


def _cluster() -> dict:
    return table_shapes(cluster_statements(DB))


def test_every_single_node_table_has_its_cluster_pair_with_the_same_columns() -> None:
    single, cluster = _single(), _cluster()
    assert len(single) == 16
    assert set(cluster) == set(single) | {t + LOCAL_SUFFIX for t in single}
    for table, shape in single.items():
        local, dist = cluster[table + LOCAL_SUFFIX], cluster[table]
        assert local.columns == shape.columns, table
        assert local.order_by == shape.order_by, table
        base = shape.engine.split("(")[0]
        assert local.engine.startswith(f"Replicated{base}('/clickhouse/tables/{{shard}}/{{database}}/{{table}}', '{{replica}}'"), table
        # The version column of a ReplacingMergeTree(revision) is kept.
        if "(" in shape.engine:
            assert local.engine.endswith(shape.engine[shape.engine.index("(") + 1 :]), table
        assert dist.engine == "Distributed"
        assert dist.as_table == table + LOCAL_SUFFIX
        assert dist.distributed == (CLUSTER, DB, table + LOCAL_SUFFIX)
        assert dist.sharding_key == f"cityHash64({', '.join(SHARDING_KEYS[table])})"
        assert dist.columns == shape.columns, table


def test_the_audit_trail_stays_a_plain_mergetree_and_the_dedup_window_is_kept() -> None:
    cluster = _cluster()
    assert cluster["audit_records_local"].engine.startswith("ReplicatedMergeTree(")
    assert cluster["alarms_local"].engine.endswith("'{replica}', revision)")
    script = cluster_script(DB)
    assert "non_replicated_deduplication_window" not in script
    assert script.count("replicated_deduplication_window = 1000") == SCHEMA_PATH.read_text().count(
        "non_replicated_deduplication_window = 1000"
    )


def test_sharding_keys_are_columns_of_each_sorting_key() -> None:
    single = _single()
    assert set(SHARDING_KEYS) == set(single)
    for table, key in SHARDING_KEYS.items():
        assert set(key) <= set(sorting_key_columns(single[table].order_by)), table
    # One unit's rows share a shard across the unit tables (joins by (line, unit_id) stay local).
    unit_tables = [t for t, s in single.items() if sorting_key_columns(s.order_by)[:2] == ["line", "unit_id"]]
    assert len(unit_tables) == 6
    assert {SHARDING_KEYS[t] for t in unit_tables} == {("site", "line", "unit_id")}


def test_every_table_with_a_line_has_the_site_and_shards_by_it_first() -> None:
    """A central copy's plants repeat line and unit ids: the site keeps their rows apart (the end of
    the sorting key) and leads the sharding key; SITE_TABLES (the writers' stamp list) is that set."""
    single = _single()
    with_line = {t for t, s in single.items() if any(name == "line" for name, _ in s.columns)}
    assert with_line == SITE_TABLES
    for table in SITE_TABLES:
        assert single[table].columns[0] == ("site", "LowCardinality(String)"), table
        assert sorting_key_columns(single[table].order_by)[-1] == "site", table
        assert SHARDING_KEYS[table][0] == "site", table


def test_the_parser_reads_the_single_node_schema_as_clickhouse_does(
    chdb_client: ChdbClient, embedded_settings: Settings
) -> None:
    db = embedded_settings.clickhouse.database
    rows = chdb_client.query(
        "SELECT table, name, type FROM system.columns WHERE database = {db:String} AND table != 'false_rejects' "
        "ORDER BY table, position",
        {"db": db},
    ).rows
    actual: dict[str, list[tuple[str, str]]] = {}
    for table, name, type_ in rows:
        actual.setdefault(table, []).append((name, type_.replace(" ", "")))
    parsed: dict[str, list[tuple[str, str]]] = {}
    for table, shape in table_shapes(schema_statements(db)).items():
        for name, decl in shape.columns:
            type_ = decl.split(" DEFAULT ")[0].split(" MATERIALIZED ")[0].split(" CODEC(")[0].replace(" ", "")
            if type_.startswith("Nested("):
                for sub in split_top_level(type_[len("Nested(") : -1]):
                    sub_name, sub_type = sub.split(maxsplit=1) if " " in sub else _split_compact(sub)
                    parsed.setdefault(table, []).append((f"{name}.{sub_name}", f"Array({sub_type})"))
            else:
                parsed.setdefault(table, []).append((name, type_))
    assert parsed == actual


def _split_compact(item: str) -> tuple[str, str]:
    # "stationLowCardinality(String)" after the blanks were removed: the name is the schema's.
    for name in ("station", "verdict", "score", "defect", "model_version", "camera"):
        if item.startswith(name) and item[len(name)].isupper():
            return name, item[len(name) :]
    raise AssertionError(item)


def test_clickhouse_parses_every_cluster_statement(chdb_client: ChdbClient) -> None:
    statements = cluster_statements(DB)
    # single node: 1 database + 16 tables + 26 ALTERs + 1 view = 44; each table and column ALTER twice
    # here, the one index ALTER (audit_records' event_idx) on the local table only.
    assert len(statements) == 1 + 2 * 16 + 2 * 25 + 1 + 1
    for statement in statements:
        ast = chdb_client.query(f"EXPLAIN AST {statement}").rows
        assert ast, statement
        assert "ON CLUSTER" in statement


def test_the_committed_cluster_script_is_current() -> None:
    committed = (PROJECT_ROOT / "infra" / "clickhouse" / "cluster-schema.sql").read_text()
    assert committed == cluster_script(DB), "regenerate: python -m pipeline.clickhouse.cluster > infra/clickhouse/cluster-schema.sql"


def test_a_statement_without_a_cluster_rule_is_refused(tmp_path: Path) -> None:
    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE DATABASE IF NOT EXISTS {db};\n"
                      "CREATE TABLE IF NOT EXISTS {db}.new_table (a String) ENGINE = ReplacingMergeTree ORDER BY a;\n")
    with pytest.raises(ClusterSchemaError, match="new_table has no sharding key"):
        cluster_statements(DB, schema_path=schema)
    schema.write_text("CREATE TABLE IF NOT EXISTS {db}.users (username String) ENGINE = ReplacingMergeTree ORDER BY username;\n"
                      "ALTER TABLE {db}.users MODIFY TTL toDate('2030-01-01');\n")
    with pytest.raises(ClusterSchemaError, match="no cluster rule"):
        cluster_statements(DB, schema_path=schema)
    schema.write_text("CREATE TABLE IF NOT EXISTS {db}.users (username String) ENGINE = Log;\n")
    with pytest.raises(ClusterSchemaError, match="no MergeTree"):
        cluster_statements(DB, schema_path=schema)
