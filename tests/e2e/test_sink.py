"""ClickHouse sink against the real broker and chDB: idempotent under redelivery, and a message
it cannot decode is kept as a dead letter with its reason."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

from confluent_kafka import Consumer, Message, TopicPartition

from pipeline.analytics.sink import ClickHouseSink
from pipeline.clickhouse import ChdbClient
from pipeline.core.times import now_ns
from pipeline.kafka.clients import client_config, make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings
from pipeline.wire.messages import Actuation, GroundTruth, InspectionResult, UnitVerdict


def _settings(embedded_settings: Settings, broker: str) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    k = embedded_settings.kafka.model_copy(
        update={
            "bootstrap_servers": broker,
            "partitions": 1,
            "topic_results": f"sink-results-{suffix}",
            "topic_truth": f"sink-truth-{suffix}",
            "topic_actuations": f"sink-actuations-{suffix}",
            "topic_deadletter": f"sink-dlq-{suffix}",
        }
    )
    return embedded_settings.model_copy(update={"kafka": k})


def _result(unit: str, lot: str) -> InspectionResult:
    t = now_ns()
    return InspectionResult(
        unit, "line-1", "cam-1", "tablet", lot, "reject", "model", True, "crack", 0.93, 0.5,
        "tablet_classifier", "1", t - 5_000_000, t - 4_000_000, t, "w1", class_scores={"good": 0.07, "crack": 0.93},
        review_threshold=0.3,
    )


def _read_all(settings: Settings, topics: list[str], expected: int) -> list[Message]:
    consumer = Consumer(client_config(settings.kafka) | {"group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, 0, 0) for t in topics])
    messages: list[Message] = []
    deadline = time.monotonic() + 30
    while len(messages) < expected and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(100, timeout=0.5) if m.error() is None]
    consumer.close()
    assert len(messages) == expected
    return messages


def test_redelivered_batch_is_stored_once(embedded_settings: Settings, broker: str, chdb_client: ChdbClient) -> None:
    settings = _settings(embedded_settings, broker)
    ensure_topics(settings)
    lot = f"SINK-{uuid.uuid4().hex[:6]}"
    producer = make_producer(settings.kafka, "test-sink")
    for i in range(5):
        unit = f"{lot}-{i}"
        producer.produce(settings.kafka.topic_results, key=unit.encode(), value=_result(unit, lot).to_json())
        truth = GroundTruth(unit, "line-1", lot, "tablet", "defect", "crack", now_ns())
        producer.produce(settings.kafka.topic_truth, key=unit.encode(), value=truth.to_json())
    producer.produce(settings.kafka.topic_results, key=b"junk", value=b"{not json")
    producer.flush(10)
    messages = _read_all(settings, [settings.kafka.topic_results, settings.kafka.topic_truth], 11)

    sink = ClickHouseSink(settings, chdb_client)
    sink.write(messages)
    sink.write(messages)  # a crash before the commit: the same batch again
    sink.write(messages[:3])  # and a redelivery cut differently (other dedup token)

    db = settings.clickhouse.database
    q = f"'{lot}'"
    assert chdb_client.query(f"SELECT count() FROM {db}.inspections FINAL WHERE lot = {q}").scalar() == 5
    assert chdb_client.query(f"SELECT count() FROM {db}.ground_truth FINAL WHERE lot = {q}").scalar() == 5
    row = chdb_client.query(
        f"""SELECT score, class_scores['crack'], latency_ms, threshold, review_threshold
            FROM {db}.inspections FINAL WHERE unit_id = '{lot}-0'"""
    ).rows[0]
    assert abs(row[0] - 0.93) < 1e-6 and abs(row[1] - 0.93) < 1e-6 and 4.9 < row[2] < 5.1
    assert abs(row[3] - 0.5) < 1e-6 and abs(row[4] - 0.3) < 1e-6  # both thresholds of the judging version
    junk = chdb_client.query(
        f"SELECT stage, reason FROM {db}.dead_letters FINAL WHERE source LIKE '{settings.kafka.topic_results}:%'"
    ).rows
    assert len(junk) == 1 and junk[0][0] == "sink" and "not JSON" in junk[0][1]


def test_dedup_token_tells_a_new_topic_incarnation_from_an_old_one(
    embedded_settings: Settings, chdb_client: ChdbClient
) -> None:
    """Offsets restart at 0 when a topic is re-created (a fresh embedded broker): the same
    offsets with a new first-message time must be stored, a redelivery (same time) must not."""
    from confluent_kafka import TIMESTAMP_CREATE_TIME

    db = f"inc_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    settings = embedded_settings.model_copy(
        update={"clickhouse": embedded_settings.clickhouse.model_copy(update={"database": db})}
    )
    sink = ClickHouseSink(settings, chdb_client)
    topic = settings.kafka.topic_actuations

    def actuation(unit: str, ts_ms: int) -> Message:
        a = Actuation(unit_id=unit, line="line-1", lot="L", cause="model", defect="crack",
                      capture_ns=ts_ms * 1_000_000, command_issued_ns=ts_ms * 1_000_000 + 1,
                      fired_ns=ts_ms * 1_000_000 + 5, actuator="a")
        m = Message(topic=topic, partition=0, offset=0, value=a.to_json(),
                    timestamp=(TIMESTAMP_CREATE_TIME, ts_ms))
        return m

    sink.write([actuation("first-run-unit", 1_000)])
    sink.write([actuation("first-run-unit", 1_000)])  # redelivered: deduplicated
    sink.write([actuation("second-run-unit", 2_000)])  # same offset, new incarnation: stored
    rows = chdb_client.query(f"SELECT unit_id FROM {db}.actuations ORDER BY unit_id").rows
    assert [r[0] for r in rows] == ["first-run-unit", "second-run-unit"]


def test_station_frames_and_unit_verdicts_are_stored_one_row_each(
    embedded_settings: Settings, chdb_client: ChdbClient
) -> None:
    """A multi-station unit: one ``inspections`` row per station frame, one ``unit_verdicts`` row
    per unit with every station's result and the missing ones; a redelivery changes nothing."""
    from confluent_kafka import TIMESTAMP_CREATE_TIME

    db = f"st_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    settings = embedded_settings.model_copy(
        update={"clickhouse": embedded_settings.clickhouse.model_copy(update={"database": db})}
    )
    sink = ClickHouseSink(settings, chdb_client)
    k = settings.kafka

    def message(topic: str, offset: int, value: bytes) -> Message:
        return Message(topic=topic, partition=0, offset=offset, value=value, timestamp=(TIMESTAMP_CREATE_TIME, 1_000))

    side, top = (replace(_result("u1", "L"), station=s, camera=f"S-{s}", verdict="pass", defect="none")
                 for s in ("side", "top"))
    verdicts = [
        UnitVerdict("u1", "line-1", "L", "vial", "pass", "model", now_ns(), stations=[
            {"station": "side", "verdict": "pass", "score": 0.1, "defect": "none", "model_version": "3", "camera": "S-side"},
            {"station": "top", "verdict": "pass", "score": None, "defect": "none", "model_version": "2", "camera": "S-top"},
        ], reason="every station passed"),
        UnitVerdict("u2", "line-1", "L", "vial", "reject", "late", now_ns(), stations=[
            {"station": "side", "verdict": "pass", "score": 0.2, "defect": "none", "model_version": "3", "camera": "S-side"},
        ], missing=["top"], reason="no verdict from station top by the cutoff"),
    ]
    batch = [message(k.topic_results, 0, side.to_json()), message(k.topic_results, 1, top.to_json())] + [
        message(k.topic_unit_verdicts, i, v.to_json()) for i, v in enumerate(verdicts)]
    sink.write(batch)
    sink.write(batch)  # redelivered
    frames = chdb_client.query(f"SELECT unit_id, station, camera FROM {db}.inspections ORDER BY station").rows
    assert frames == [("u1", "side", "S-side"), ("u1", "top", "S-top")]
    rows = chdb_client.query(
        f"""SELECT unit_id, verdict, cause, stations.station, stations.verdict, stations.score,
                   stations.model_version, missing, reason
            FROM {db}.unit_verdicts FINAL ORDER BY unit_id"""
    ).rows
    assert [r[:5] for r in rows] == [("u1", "pass", "model", ["side", "top"], ["pass", "pass"]),
                                     ("u2", "reject", "late", ["side"], ["pass"])]
    assert rows[0][5][1] is None and rows[0][6] == ["3", "2"] and rows[1][7] == ["top"]
    assert "station top" in rows[1][8]
    assert chdb_client.query(f"SELECT count() FROM {db}.unit_verdicts").scalar() == 2
    assert chdb_client.query(f"SELECT count() FROM {db}.dead_letters").scalar() == 0
    # Each station frame is an audited decision of its own, recorded once.
    subjects = chdb_client.query(
        f"SELECT subject FROM {db}.audit_records WHERE action = 'inspection.decision' ORDER BY subject").rows
    assert subjects == [("u1@side",), ("u1@top",)]
