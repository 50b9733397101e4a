"""Which partition a line's records go to (docs/scale.md, "Partitioning by line").

The line-keyed topics (captures, results, rejects, and a per-line actuator's heartbeats) put all of
a line's records in one partition, chosen here and not by the client's key hash: a per-line
actuator `assign()`s exactly that partition, so it must not move when a line or partitions are
added. ``kafka.line_partitions`` pins lines; a line not pinned gets ``crc32(line) mod
kafka.partitions``, stable only while the partition count is (pin lines before raising it).
Producers and actuators read the same settings, so they agree; a record the map would send
elsewhere is never silently lost to the gate: an actuator that does not see a unit does not
release it (positive release, docs/actuation.md), so the unit is rejected.

Frames stay keyed by unit id (every worker of the group shares a line's load); worker heartbeats
go to every partition, so each line's partition carries every worker's liveness.
"""

from __future__ import annotations

import zlib

from confluent_kafka import TopicPartition

from pipeline.settings import KafkaSettings


def line_partition(kafka: KafkaSettings, line: str) -> int:
    """The partition of `line` on every line-keyed topic."""
    pinned = kafka.line_partitions.get(line)
    if pinned is not None:
        return pinned
    return zlib.crc32(line.encode()) % kafka.partitions


def line_topics(kafka: KafkaSettings) -> list[str]:
    """The topics a per-line actuator reads, all keyed by line."""
    return [kafka.topic_captures, kafka.topic_results, kafka.topic_rejects, kafka.topic_heartbeats]


def line_assignment(kafka: KafkaSettings, line: str) -> list[TopicPartition]:
    """What a per-line actuator `assign()`s: its line's partition of each of `line_topics`."""
    partition = line_partition(kafka, line)
    return [TopicPartition(topic, partition) for topic in line_topics(kafka)]


def every_partition(kafka: KafkaSettings) -> range:
    """The partitions a worker heartbeat is sent to (the topics are created with this count)."""
    return range(kafka.partitions)
