"""Topic creation against the real (embedded) broker."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from pipeline.embedded.process import free_port
from pipeline.kafka.clients import flush_or_raise, make_consumer, make_producer
from pipeline.kafka.topics import TopicSetupError, ensure_topics, topic_specs
from pipeline.settings import KafkaSettings, Settings

TOPIC_FIELDS = [f for f in KafkaSettings.model_fields if f.startswith("topic_")]


def _settings(embedded_settings: Settings, bootstrap: str, prefix: str) -> Settings:
    k = embedded_settings.kafka
    return embedded_settings.model_copy(
        update={
            "kafka": k.model_copy(
                update={
                    "bootstrap_servers": bootstrap,
                    **{
                        f: f"{prefix}.{getattr(k, f)}"
                        for f in TOPIC_FIELDS
                    },
                }
            )
        }
    )


def test_topic_specs_follow_settings(embedded_settings: Settings) -> None:
    k = embedded_settings.kafka
    specs = {s.name: s for s in topic_specs(k)}
    assert set(specs) == {k.topic_frames, k.topic_results, k.topic_rejects, k.topic_captures, k.topic_deadletter,
                          k.topic_truth, k.topic_actuations, k.topic_heartbeats, k.topic_gate_events,
                          k.topic_alarms, k.topic_audit, k.topic_audit_events, k.topic_audit_seals, k.topic_alerts,
                          k.topic_reject_images,
                          k.topic_recipes, k.topic_unit_verdicts, k.topic_camera_status,
                          k.topic_shadow}
    assert specs[k.topic_recipes].config == {"cleanup.policy": "compact"}
    assert all(s.partitions == k.partitions and s.replication_factor == k.replication_factor for s in specs.values())
    big = int(specs[k.topic_frames].config["max.message.bytes"])
    assert big > k.max_message_bytes
    assert specs[k.topic_deadletter].config == specs[k.topic_frames].config
    assert specs[k.topic_results].config == {}
    # GMP records never expire: the trail's copy, the events waiting for the audit service, the seals.
    for topic in (k.topic_audit, k.topic_audit_events, k.topic_audit_seals):
        assert specs[topic].config == {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


def test_ensure_topics_is_idempotent(broker: str, embedded_settings: Settings) -> None:
    settings = _settings(embedded_settings, broker, f"t{uuid.uuid4().hex[:8]}")
    k = settings.kafka
    created = ensure_topics(settings)
    assert len(created) == len(TOPIC_FIELDS) == 19
    assert ensure_topics(settings) == []  # existing topics are fine

    admin = AdminClient({"bootstrap.servers": broker})
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[k.topic_frames].partitions) == k.partitions
    frames_config = admin.describe_configs([ConfigResource("topic", k.topic_frames)])
    values = {name: entry.value for name, entry in next(iter(frames_config.values())).result().items()}
    assert int(values["max.message.bytes"]) > k.max_message_bytes


def test_produce_consume_round_trip(broker: str, embedded_settings: Settings) -> None:
    settings = _settings(embedded_settings, broker, f"rt{uuid.uuid4().hex[:8]}")
    k = settings.kafka
    ensure_topics(settings)
    producer = make_producer(k, "test-producer")
    frame = b"\x89PNG\r\n\x1a\n" + bytes(200_000)  # a frame-sized message
    for i in range(30):
        producer.produce(k.topic_frames, key=f"unit-{i}".encode(), value=frame, headers=[("ls-unit-id", f"unit-{i}".encode())])
    flush_or_raise(producer, 10)

    consumer = make_consumer(k, f"group-{uuid.uuid4().hex[:6]}", "test-consumer")
    consumer.subscribe([k.topic_frames])
    seen: dict[str, bytes] = {}
    deadline = time.monotonic() + 30
    try:
        while len(seen) < 30 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            seen[msg.key().decode()] = msg.value()
            assert dict(msg.headers())["ls-unit-id"] == msg.key()
            consumer.store_offsets(msg)
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(k.topic_frames, p) for p in range(k.partitions)], timeout=10)
    finally:
        consumer.close()
    assert len(seen) == 30 and all(v == frame for v in seen.values())
    assert sum(tp.offset for tp in committed if tp.offset > 0) == 30


def test_unreachable_broker_is_named(embedded_settings: Settings) -> None:
    address = f"127.0.0.1:{free_port()}"
    settings = _settings(embedded_settings, address, "x")
    with pytest.raises(TopicSetupError, match=f"cannot list topics on Kafka {address}"):
        ensure_topics(settings, timeout_s=1.5)
