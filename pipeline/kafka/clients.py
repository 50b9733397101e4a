"""confluent-kafka clients configured from settings, with safe defaults.

Producers are idempotent with acks=all; consumers never auto-commit (offsets are committed by
the caller only after its outputs are acknowledged).
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from pipeline.settings import KafkaSettings


def bootstrap(kafka: KafkaSettings) -> str:
    if not kafka.bootstrap_servers:
        raise RuntimeError(
            "no Kafka broker configured: set LINESIGHT_KAFKA__BOOTSTRAP_SERVERS "
            "(127.0.0.1:19092 while `linesight up` runs the embedded broker)"
        )
    return kafka.bootstrap_servers


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security settings shared by every client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap(kafka),
        "security.protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
        conf["sasl.username"] = kafka.sasl_username or ""
        conf["sasl.password"] = kafka.resolved_sasl_password()
    return conf


def make_producer(kafka: KafkaSettings, client_id: str, **overrides: Any) -> Producer:
    conf = client_config(kafka) | {
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.max.bytes": max(kafka.max_message_bytes + 64 * 1024, 1_000_000),
        "compression.type": "none",  # frames are already compressed images
    }
    return Producer(conf | overrides)


def make_consumer(kafka: KafkaSettings, group_id: str, client_id: str, **overrides: Any) -> Consumer:
    conf = client_config(kafka) | {
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": max(500, kafka.session_timeout_ms // 6),
        "fetch.max.bytes": 64 * 1024 * 1024,
    }
    return Consumer(conf | overrides)


def flush_or_raise(producer: Producer, timeout_s: float) -> None:
    """Flush and fail loudly when anything is left unsent: never commit past lost output."""
    left = producer.flush(timeout_s)
    if left:
        raise KafkaException(f"{left} messages still unsent after {timeout_s:.0f} s")
