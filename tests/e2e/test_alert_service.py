"""The alert service against the real (embedded) broker, and alert rows in ClickHouse."""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import TopicPartition

from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.record import AlertRecord
from pipeline.alerts.service import AlertPublisher, AlertService, run_alert_service
from pipeline.analytics.sink import alert_row
from pipeline.clickhouse import ChdbClient
from pipeline.core.health import HealthState
from pipeline.core.times import now_ns
from pipeline.kafka.clients import flush_or_raise, make_consumer, make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings
from pipeline.wire.messages import InspectionResult

TOPICS = ("topic_frames", "topic_results", "topic_rejects", "topic_deadletter", "topic_truth", "topic_actuations",
          "topic_heartbeats", "topic_gate_events", "topic_alarms", "topic_audit", "topic_alerts")


class FakeMessage:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


def test_alert_rows_keep_the_latest_revision(chdb_client: ChdbClient, embedded_settings: Settings) -> None:
    db = embedded_settings.clickhouse.database
    raised = AlertRecord("line-1:reject_run:1", "reject_run", "critical", "line-1", "active", 10**18, 10**18,
                         "8 consecutive rejects", 8.0)
    acked = AlertRecord(**(raised.__dict__ | {"acknowledged_by": "olga", "acknowledged_ns": 10**18 + 5,
                                              "revision": 1}))
    rows = [alert_row(FakeMessage(r.to_json())) for r in (raised, acked)]
    chdb_client.insert_json_rows(f"{db}.alerts", rows)
    got = chdb_client.query(
        f"SELECT state, acknowledged_by, revision FROM {db}.alerts FINAL WHERE alert_id = 'line-1:reject_run:1'").rows
    assert [tuple(r) for r in got] == [("active", "olga", 1)]


def test_alert_service_publishes_then_commits(broker: str, embedded_settings: Settings) -> None:
    prefix = f"al{uuid.uuid4().hex[:8]}"
    k = embedded_settings.kafka
    settings = embedded_settings.model_copy(update={"kafka": k.model_copy(update={
        "bootstrap_servers": broker, **{f: f"{prefix}.{getattr(k, f)}" for f in TOPICS}})})
    k = settings.kafka
    ensure_topics(settings)
    producer = make_producer(k, "test-results")
    t = now_ns()
    for i in range(5):
        r = InspectionResult(f"u{i}", "line-7", "cam-1", "p", "lot", "reject", "model", True, "crack", 0.9, 0.5,
                             "m", "1", t, t, t, "w")
        producer.produce(k.topic_results, key=b"line-7", value=r.to_json())  # one partition: in order
    flush_or_raise(producer, 10)

    engine = AlertEngine(AlertConfig(run_length=4))
    service = AlertService(settings, engine, AlertPublisher(settings))
    stop, health = threading.Event(), HealthState("alerts")
    thread = threading.Thread(target=run_alert_service, args=(service, stop, health), daemon=True)
    thread.start()
    consumer = make_consumer(k, f"read-{prefix}", "test-alerts")
    consumer.subscribe([k.topic_alerts])
    got: list[AlertRecord] = []
    deadline = time.monotonic() + 40
    try:
        while not got and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None and not m.error():
                got.append(AlertRecord.from_json(m.value()))
    finally:
        consumer.close()
    assert got and got[0].kind == "reject_run" and got[0].line == "line-7" and got[0].state == "active"
    # offsets of the consumed results are committed (after the alert was acknowledged by the broker)
    deadline = time.monotonic() + 20
    committed = 0
    check = make_consumer(k, settings.services.alerts_group, "test-check")
    try:
        while committed < 5 and time.monotonic() < deadline:
            parts = check.committed([TopicPartition(k.topic_results, p) for p in range(k.partitions)], timeout=10)
            committed = sum(tp.offset for tp in parts if tp.offset > 0)
            time.sleep(0.3)
    finally:
        check.close()
        stop.set()
        thread.join(timeout=15)
    assert committed == 5
