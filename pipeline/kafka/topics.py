"""Create the LineSight Kafka topics, idempotently.

Every service calls this (through `EmbeddedStack` or at its own start) instead of relying on
broker auto-creation: partitions, replication and the frame size cap must be what the settings
say. The embedded broker keeps topics in memory only, so they are created again at every start.
Frames and dead letters carry encoded images, hence their larger ``max.message.bytes``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from pipeline.kafka.clients import bootstrap, client_config
from pipeline.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

# Record-batch and header overhead on top of the largest frame the gateway accepts; the same
# margin `pipeline.kafka.clients.make_producer` adds to its message.max.bytes.
FRAME_OVERHEAD_BYTES = 64 * 1024
# Topics whose records are GMP records: the broker-wide retention must not apply to them.
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


class TopicSetupError(RuntimeError):
    """A topic could not be created or inspected; the message names the topic and broker."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]


def topic_specs(kafka: KafkaSettings) -> list[TopicSpec]:
    """The topics named in the settings, with their partitions and configs."""
    big = {"max.message.bytes": str(max(kafka.max_message_bytes + FRAME_OVERHEAD_BYTES, 1_048_588))}
    names = [
        (kafka.topic_frames, big),
        (kafka.topic_results, {}),
        (kafka.topic_rejects, {}),
        (kafka.topic_captures, {}),
        (kafka.topic_deadletter, big),
        (kafka.topic_truth, {}),
        (kafka.topic_actuations, {}),
        (kafka.topic_heartbeats, {}),
        (kafka.topic_gate_events, {}),
        (kafka.topic_alarms, {}),
        # The audit trail's copy, the events waiting for the audit service, and the signed seals
        # (the trail's anchor): GMP records, never expired by the broker (docs/audit.md).
        (kafka.topic_audit, FOREVER),
        (kafka.topic_audit_events, FOREVER),
        (kafka.topic_audit_seals, FOREVER),
        (kafka.topic_alerts, {}),
        (kafka.topic_reject_images, {}),
        (kafka.topic_recipes, {"cleanup.policy": "compact"}),
        (kafka.topic_unit_verdicts, {}),
        (kafka.topic_camera_status, {}),
        (kafka.topic_shadow, {}),
    ]
    return [TopicSpec(n, kafka.partitions, kafka.replication_factor, dict(c)) for n, c in names]


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics; return the names created (existing ones are left as they are)."""
    kafka = settings.kafka
    brokers = bootstrap(kafka)
    admin = AdminClient(client_config(kafka) | {"logger": logging.getLogger("linesight.topics.librdkafka")})
    specs = topic_specs(kafka)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise TopicSetupError(f"cannot list topics on Kafka {brokers}: {exc}") from exc
    for spec in specs:
        if spec.name in existing and len(existing[spec.name].partitions) != spec.partitions:
            log.warning(
                "Kafka topic %s on %s has %d partitions, settings say %d (left as is)",
                spec.name, brokers, len(existing[spec.name].partitions), spec.partitions,
            )
    _warn_config_drift(admin, [s for s in specs if s.name in existing and s.config], brokers, timeout_s)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.config)
         for s in missing],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created concurrently by another service: fine
            raise TopicSetupError(f"cannot create Kafka topic {name!r} on {brokers}: {exc}") from exc
    log.info("created Kafka topics on %s: %s", brokers, ", ".join(sorted(created)))
    return sorted(created)


def _warn_config_drift(admin: AdminClient, specs: list[TopicSpec], brokers: str, timeout_s: float) -> None:
    """An existing topic keeps its configuration (a topic auto-created before LineSight set it up
    has the broker's default retention: the seal topic would then expire the trail's anchors).
    Say so loudly, with the fix; altering a plant's broker is its IT's decision."""
    if not specs:
        return
    try:
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in specs],
                                         request_timeout=timeout_s)
        described = {res.name: future.result(timeout=timeout_s) for res, future in futures.items()}
    except Exception as exc:  # noqa: BLE001 - a broker without DescribeConfigs: nothing to compare
        log.info("cannot read topic configs on %s to compare them with the settings: %s", brokers, exc)
        return
    for spec in specs:
        have = described.get(spec.name, {})
        wrong = {k: v for k, v in spec.config.items() if k in have and have[k].value != v}
        if wrong:
            now = ", ".join(f"{k}={have[k].value}" for k in sorted(wrong))
            fix = ",".join(f"{k}={v}" for k, v in sorted(wrong.items()))
            log.warning("Kafka topic %s on %s has %s, LineSight needs %s (created before LineSight set it up?); fix: "
                        "kafka-configs.sh --bootstrap-server %s --alter --entity-type topics --entity-name %s "
                        "--add-config %s", spec.name, brokers, now, fix, brokers, spec.name, fix)
