"""ClickHouse interface: chDB engine with the project schema, serialisation rules, backend choice."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.clickhouse import (
    SCHEMA_PATH,
    SITE_TABLES,
    ChdbClient,
    ChdbInUseError,
    ClickHouseError,
    ServerClient,
    connect,
    json_each_row,
    schema_statements,
    split_statements,
)
from pipeline.core.times import datetime_from_ns
from pipeline.embedded.process import free_port
from pipeline.settings import Settings

NS = 1_714_564_800_123_456_789  # 2024-05-01 12:00:00.123456789 UTC


def _fresh_db(client: ChdbClient) -> str:
    db = f"t_{uuid.uuid4().hex[:10]}"
    client.apply_schema(db)
    return db


def _inspection(unit: str, **over: object) -> dict[str, object]:
    row: dict[str, object] = dict(
        unit_id=unit, line="line-1", camera="cam-1", product="tablet", lot="L1", verdict="pass",
        cause="model", inspected=True, defect="none", score=0.12, threshold=0.5,
        model_name="tablet_inspector", model_version="3",
        capture_time=datetime_from_ns(NS), received_time=datetime_from_ns(NS + 2_000_000),
        inferred_time=datetime_from_ns(NS + 12_500_000), worker="w1", error="",
        class_scores={"none": 0.88, "chip": 0.12}, kafka_partition=1, kafka_offset=7,
    )
    row.update(over)
    return row


# --------------------------------------------------------------------------- pure functions


def test_split_statements_respects_quotes_and_comments() -> None:
    sql = "-- a; comment\nCREATE TABLE a (s String DEFAULT ';') ENGINE=Memory;\n/* x; */ SELECT 'it''s';  ;\n"
    assert split_statements(sql) == ["CREATE TABLE a (s String DEFAULT ';') ENGINE=Memory", "SELECT 'it''s'"]
    statements = schema_statements("linesight_x", SCHEMA_PATH)
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS linesight_x"
    assert all("{db}" not in s for s in statements) and len(statements) == 44
    with pytest.raises(ValueError):
        schema_statements("bad name; DROP")


def test_row_serialisation_rules() -> None:
    body = json_each_row([{
        "t": datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
        "f": math.nan, "g": -math.inf, "m": {"a": math.inf}, "d": Decimal("1.25"), "n": None,
    }])
    assert body == ('{"t":"2024-05-01 12:00:00.000005","f":"nan","g":"-inf","m":{"a":"inf"},'
                    '"d":"1.25","n":null}')
    with pytest.raises(ValueError, match="naive datetime"):
        json_each_row([{"t": datetime(2024, 5, 1)}])
    with pytest.raises(TypeError):
        json_each_row([{"x": object()}])
    assert datetime_from_ns(NS) == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


# --------------------------------------------------------------------------- chDB engine


def test_schema_applied(chdb_client: ChdbClient, embedded_settings: Settings) -> None:
    db = embedded_settings.clickhouse.database
    tables = chdb_client.query(
        "SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name", {"db": db}
    )
    assert [r[0] for r in tables.rows] == [
        "actuations", "alarms", "alerts", "audit_records", "challenge_runs", "dead_letters", "false_rejects",
        "gate_events", "ground_truth", "inspections", "reject_images", "review_decisions", "review_samples",
        "sessions", "shadow_inspections", "unit_verdicts", "users",
    ]
    assert chdb_client.apply_schema(db) == 44  # idempotent


def test_an_inspections_table_from_before_stations_gains_the_station_in_its_key(chdb_client: ChdbClient) -> None:
    """An existing database is migrated by the schema's ALTERs: its one-camera rows keep
    station '', and station frames of one unit become rows of their own."""
    db = f"t_{uuid.uuid4().hex[:10]}"
    chdb_client.command(f"CREATE DATABASE {db}")
    chdb_client.command(f"""CREATE TABLE {db}.inspections (unit_id String, line LowCardinality(String),
        camera LowCardinality(String), product LowCardinality(String), lot String, verdict LowCardinality(String),
        cause LowCardinality(String), inspected Bool, defect LowCardinality(String), score Nullable(Float32),
        threshold Nullable(Float32), model_name LowCardinality(String), model_version LowCardinality(String),
        capture_time DateTime64(6, 'UTC'), received_time DateTime64(6, 'UTC'), inferred_time DateTime64(6, 'UTC'),
        worker LowCardinality(String), error String, class_scores Map(String, Float32), kafka_partition UInt32,
        kafka_offset UInt64) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(capture_time) ORDER BY (line, unit_id)""")
    old = _inspection("u0")
    old.pop("review_threshold", None)
    chdb_client.insert_json_rows(f"{db}.inspections", [old])
    chdb_client.apply_schema(db)
    chdb_client.apply_schema(db)  # twice: idempotent
    key = chdb_client.query(f"SELECT sorting_key FROM system.tables WHERE database = '{db}' AND name = 'inspections'")
    assert key.scalar() == "line, unit_id, station, site"
    chdb_client.insert_json_rows(f"{db}.inspections", [_inspection("u1", station="side"), _inspection("u1", station="top")])
    rows = chdb_client.query(f"SELECT unit_id, station FROM {db}.inspections FINAL ORDER BY unit_id, station").rows
    assert rows == [("u0", ""), ("u1", "side"), ("u1", "top")]
    # ... and the purpose column (challenge units, docs/validation.md): old rows are production ('').
    assert chdb_client.query(f"SELECT purpose FROM {db}.inspections FINAL WHERE unit_id = 'u0'").scalar() == ""


def test_a_database_from_before_sites_gains_the_site_in_every_line_tables_key(
    chdb_client: ChdbClient, tmp_path: Path
) -> None:
    """Today's schema with `site` taken out, applied and filled, then today's: each table with a line
    gets the column at the end of its key (old rows ''), and two plants' equal units stay two rows."""
    old_schema = tmp_path / "schema.sql"
    text = re.sub(r"^\s+site\s+LowCardinality\(String\),\n", "", SCHEMA_PATH.read_text(), flags=re.M)
    text = re.sub(r"\s*ADD COLUMN IF NOT EXISTS site LowCardinality\(String\) FIRST,", "", text)
    old_schema.write_text(text.replace(", site)", ")"))
    assert not any(re.search(r"\bsite\b", s) for s in schema_statements("x", old_schema))
    db = f"t_{uuid.uuid4().hex[:10]}"
    chdb_client.apply_schema(db, old_schema)
    chdb_client.insert_json_rows(f"{db}.inspections", [_inspection("u0")])
    chdb_client.apply_schema(db)
    chdb_client.apply_schema(db)  # twice: idempotent
    keys = dict(chdb_client.query(
        "SELECT name, sorting_key FROM system.tables WHERE database = {db:String}", {"db": db}
    ).rows)
    with_line = {t for (t,) in chdb_client.query(
        "SELECT DISTINCT table FROM system.columns WHERE database = {db:String} AND name = 'line' "
        "AND table != 'false_rejects'", {"db": db}).rows}
    assert with_line == SITE_TABLES
    assert {t for t, k in keys.items() if k.endswith(", site")} == SITE_TABLES
    chdb_client.insert_json_rows(f"{db}.inspections", [_inspection("u0", site="plant-07")])
    rows = chdb_client.query(f"SELECT site, unit_id FROM {db}.inspections FINAL ORDER BY site").rows
    assert rows == [("", "u0"), ("plant-07", "u0")]


def test_insert_and_read_back_typed_values(chdb_client: ChdbClient) -> None:
    db = _fresh_db(chdb_client)
    rows = [
        _inspection("u1"),
        _inspection("u2", verdict="reject", cause="failsafe", inspected=False, defect="uninspected",
                     score=None, threshold=None, class_scores={}, error="triton timeout"),
    ]
    assert chdb_client.insert_json_rows(f"{db}.inspections", rows) == 2
    assert chdb_client.insert_json_rows(f"{db}.inspections", []) == 0
    got = chdb_client.query(
        f"SELECT unit_id, verdict, inspected, score, threshold, class_scores, capture_time, "
        f"latency_ms, stored_time FROM {db}.inspections ORDER BY unit_id"
    ).named()
    first, second = got
    assert first["capture_time"] == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert first["inspected"] is True and math.isclose(first["score"], 0.12, rel_tol=1e-6)
    assert first["class_scores"].keys() == {"none", "chip"}
    assert math.isclose(first["class_scores"]["none"], 0.88, rel_tol=1e-6)
    assert first["latency_ms"] == pytest.approx(12.5)  # MATERIALIZED from the DateTime64 columns
    assert first["stored_time"].tzinfo is not None
    assert second["score"] is None and second["threshold"] is None and second["class_scores"] == {}
    assert second["inspected"] is False and second["verdict"] == "reject"


def test_deduplication_token_drops_a_retried_insert(chdb_client: ChdbClient) -> None:
    db = _fresh_db(chdb_client)
    table = f"{db}.inspections"
    chdb_client.command(f"SYSTEM STOP MERGES {table}")  # so ReplacingMergeTree cannot hide duplicates
    batch = [_inspection(f"u{i}", kafka_offset=100 + i) for i in range(3)]
    token = {"insert_deduplication_token": "linesight.results:1:100-102"}
    chdb_client.insert_json_rows(table, batch, token)
    # A retry of the same offsets, even with different content (say a re-scored row), is dropped.
    retried = [_inspection(f"u{i}", kafka_offset=100 + i, worker="w2") for i in range(3)]
    chdb_client.insert_json_rows(table, retried, token)
    assert chdb_client.query(f"SELECT count(), groupUniqArray(worker) FROM {table}").rows == [(3, ["w1"])]
    # The same rows under another token are another block: stored (FINAL then collapses them).
    chdb_client.insert_json_rows(table, batch, {"insert_deduplication_token": "linesight.results:1:100-102#2"})
    assert chdb_client.query(f"SELECT count() FROM {table}").scalar() == 6
    assert chdb_client.query(f"SELECT count() FROM {table} FINAL").scalar() == 3


def test_command_settings_and_parameters(chdb_client: ChdbClient) -> None:
    db = _fresh_db(chdb_client)
    chdb_client.insert_json_rows(f"{db}.ground_truth", [
        {"unit_id": "u1", "line": "l", "product": "p", "label": "defect", "defect": "chip",
         "capture_time": datetime_from_ns(NS), "source": "simulator"},
    ])
    chdb_client.command(f"ALTER TABLE {db}.ground_truth DELETE WHERE unit_id = 'u1'", {"mutations_sync": 2})
    assert chdb_client.query(f"SELECT count() FROM {db}.ground_truth").scalar() == 0
    result = chdb_client.query("SELECT {n:UInt32} + 1 AS x, {s:String} AS s", {"n": 41, "s": "ok"})
    assert result.column_names == ("x", "s") and result.rows == [(42, "ok")]
    with pytest.raises(ClickHouseError, match="UNKNOWN_TABLE|does not exist"):
        chdb_client.query(f"SELECT * FROM {db}.no_such_table")


# Escape sequences of ClickHouse's text format, quotes, NUL, control characters: each binds as itself.
HOSTILE = ["ott\\x6f", "a\\", "\\", "a\\\\b", "a\\nb", "\\N", "a'b", "a`b", 'a"b', "a\x00b", "\x00",
           "tab\there", "nl\nx", "cr\rx", "\u00fc\u20ac\U0001f600", ""]


@pytest.mark.parametrize("value", HOSTILE)
def test_string_parameters_bind_as_themselves(chdb_client: ChdbClient, value: str) -> None:
    """A value reaches ClickHouse as data, never as escape sequences (``ott\\x6f`` is not ``otto``)."""
    result = chdb_client.query("SELECT {s:String} AS s, {s:String} = 'otto' AS otto", {"s": value})
    assert result.rows == [(value, False)]


def test_another_process_gets_a_clear_lock_error(chdb_client: ChdbClient, embedded_settings: Settings) -> None:
    code = textwrap.dedent(f"""
        from pipeline.clickhouse import ChdbClient, ChdbInUseError
        try:
            ChdbClient({str(embedded_settings.chdb_dir)!r})
        except ChdbInUseError as exc:
            print("LOCKED:", exc)
            raise SystemExit(7)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert "in use by another LineSight process" in proc.stdout
    assert str(embedded_settings.chdb_dir.resolve()) in proc.stdout


def test_second_directory_in_one_process_is_refused(chdb_client: ChdbClient, tmp_path: Path) -> None:
    with pytest.raises(ChdbInUseError, match="one data directory per process"):
        ChdbClient(tmp_path / "other")
    assert chdb_client.query("SELECT 1").scalar() == 1  # the open engine is unaffected


# --------------------------------------------------------------------------- backend choice


def test_connect_picks_chdb_without_url(chdb_client: ChdbClient, embedded_settings: Settings) -> None:
    client = connect(embedded_settings)
    try:
        assert isinstance(client, ChdbClient) and client.path == embedded_settings.chdb_dir.resolve()
        # Same engine and data as the fixture; the configured database is the default one.
        assert client.query("SELECT count() FROM inspections").column_names == ("count()",)
    finally:
        client.close()
    assert chdb_client.query("SELECT 1").scalar() == 1


def test_connect_picks_server_with_url(embedded_settings: Settings) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings = embedded_settings.model_copy(
        update={"clickhouse": embedded_settings.clickhouse.model_copy(update={"url": url})}
    )
    # Nothing listens there: the HTTP client is the one that tried, and the error names the URL.
    with pytest.raises(ClickHouseError, match=f"cannot connect to ClickHouse at {url}"):
        connect(settings)
    with pytest.raises(ClickHouseError, match="must be http"):
        ServerClient("ftp://x:1")
