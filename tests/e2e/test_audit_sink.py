"""Every inspection decision the sink stores lands in the audit trail once, chained per line and
results partition in offset order, redelivery included; audit records reach the audit topic."""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from confluent_kafka import Consumer, Message, TopicPartition

from pipeline.analytics.sink import ClickHouseSink
from pipeline.audit.publish import AuditPublisher
from pipeline.audit.record import DECISION_ACTION, AuditEvent
from pipeline.audit.trail import AuditTrail
from pipeline.clickhouse import ChdbClient
from pipeline.core.times import now_ns
from pipeline.kafka.clients import client_config
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings
from pipeline.wire.messages import InspectionResult


def _result(unit: str, line: str, lot: str, verdict: str = "pass") -> InspectionResult:
    t = now_ns()
    return InspectionResult(
        unit, line, "cam-1", "tablet", lot, verdict, "model", True, "none" if verdict == "pass" else "crack",
        0.1 if verdict == "pass" else 0.9, 0.5, "tablet_classifier", "2", t - 5_000_000, t - 4_000_000, t, "w1",
        review_threshold=0.3, image_sha256=hashlib.sha256(unit.encode()).hexdigest(),
    )


def _msg(settings: Settings, r: InspectionResult, partition: int, offset: int) -> Message:
    return Message(topic=settings.kafka.topic_results, partition=partition, offset=offset,
                   key=r.unit_id.encode(), value=r.to_json())


def test_sink_audits_each_decision_once(embedded_settings: Settings, chdb_client: ChdbClient, tmp_path) -> None:  # noqa: ANN001
    settings = embedded_settings.model_copy(update={"state_dir": tmp_path})  # anchors of this test only
    line = f"line-{uuid.uuid4().hex[:6]}"
    lot = f"LOT-{uuid.uuid4().hex[:6]}"
    sink = ClickHouseSink(settings, chdb_client)
    results = [_result(f"u{i}", line, lot, "reject" if i % 3 == 0 else "pass") for i in range(6)]
    batch = [_msg(settings, r, i % 2, 100 + i) for i, r in enumerate(results)]
    sink.write(batch)
    assert sink.audit_records_written == 6
    # Redelivery of the batch, and a republished result of u2 at a later offset: no new links.
    sink.write(batch)
    sink.write([_msg(settings, results[2], 0, 200)])
    assert sink.audit_records_written == 6

    trail = AuditTrail.from_settings(settings, chdb_client)
    chains = {c: recs for c, (recs, _) in trail.store.read().items() if c.startswith(f"decisions/{line}/")}
    assert sorted(chains) == [f"decisions/{line}/p0", f"decisions/{line}/p1"]
    p0 = [r for r in chains[f"decisions/{line}/p0"] if r.action == DECISION_ACTION]
    assert [r.subject for r in p0] == ["u0", "u2", "u4"]  # offset order
    d = p0[0].detail_dict()
    assert d["verdict"] == "reject" and d["model_version"] == "2" and d["threshold"] == 0.5
    assert d["review_threshold"] == 0.3 and d["image_sha256"] == hashlib.sha256(b"u0").hexdigest()
    assert d["source"].endswith(":0:100") and p0[0].user == "worker:w1" and p0[0].new_value == "reject"
    for chain in chains:
        assert trail.verify(chain=chain).ok


def test_a_result_no_utf8_holds_is_a_dead_letter_not_a_stopped_sink(
    embedded_settings: Settings, chdb_client: ChdbClient, tmp_path  # noqa: ANN001
) -> None:
    """A lone surrogate (a valid JSON escape, no UTF-8) in a result's text: neither its row nor its
    audit record could be written, and it stopped the sink's whole batch once. The result is
    dead-lettered with the reason; the batch's other results are stored and audited."""
    settings = embedded_settings.model_copy(update={"state_dir": tmp_path})
    line, lot = f"line-{uuid.uuid4().hex[:6]}", f"LOT-{uuid.uuid4().hex[:6]}"
    sink = ClickHouseSink(settings, chdb_client)
    good = _result("u-good", line, lot)
    doc = json.loads(_result("u-bad", line, lot).to_json())
    doc["error"] = "\ud800"
    bad = Message(topic=settings.kafka.topic_results, partition=0, offset=301, key=b"u-bad",
                  value=json.dumps(doc).encode())
    sink.write([bad, _msg(settings, good, 0, 302)])
    db = settings.clickhouse.database
    reasons = [r[0] for r in chdb_client.query(
        f"SELECT reason FROM {db}.dead_letters WHERE reason LIKE '%InspectionResult.error%'").rows]
    assert any("not UTF-8 text" in r for r in reasons), reasons
    stored = [r[0] for r in chdb_client.query(
        f"SELECT unit_id FROM {db}.inspections FINAL WHERE lot = {{lot:String}}", {"lot": lot}).rows]
    assert stored == ["u-good"] and sink.audit_records_written == 1


def test_audit_records_are_published(embedded_settings: Settings, broker: str, chdb_client: ChdbClient, tmp_path) -> None:  # noqa: ANN001
    k = embedded_settings.kafka.model_copy(
        update={"bootstrap_servers": broker, "partitions": 1, "topic_audit": f"audit-{uuid.uuid4().hex[:8]}"}
    )
    settings = embedded_settings.model_copy(update={"kafka": k, "state_dir": tmp_path})
    ensure_topics(settings)
    trail = AuditTrail.from_settings(settings, chdb_client, AuditPublisher(settings))
    chain = f"test-{uuid.uuid4().hex[:8]}"
    records = trail.append(chain, [AuditEvent("line.start", subject="line-1", user="otto", role="operator")])
    consumer = Consumer(client_config(settings.kafka) | {"group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition(k.topic_audit, 0, 0)])
    got: list[dict] = []
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        got += [json.loads(m.value()) for m in consumer.consume(10, timeout=0.5) if m.error() is None]
    consumer.close()
    assert got and got[0]["record_hash"] == records[0].record_hash and got[0]["chain"] == chain
