"""The commit-after-write loop shared by the confluent-kafka services.

Messages accumulate until the batch is full or its oldest message waited `max_wait_s`; then the
handler writes its outputs (ClickHouse insert, produced messages flushed) and only when it
returns are the batch's offsets committed, synchronously. A handler
exception stops the service loudly without committing, so the batch is redelivered on restart
(sinks are idempotent under redelivery).

A commit refused because the group no longer knows this member's generation (a rebalance, or a
memory-only broker that restarted and forgot the group) is not fatal: the batch's outputs are
written, so the loop goes on while librdkafka re-joins, and the batch may come again. A partition
whose offsets start over (its log was re-created) ends the batch from the old log first, handled
and not committed: its offsets mean nothing in the new log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipeline.core.health import HealthState
from pipeline.kafka.lag import LagGauge, consumer_lag

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[Message]], None]
# Draining (`idle_stop`): this long without a message means the topic is read to its end (longer
# than librdkafka's default fetch.wait.max.ms of 500 ms, which an empty fetch may take).
DRAIN_QUIET_S = 1.0

# Commit errors that say the group's generation is gone, or its coordinator or topic is (a broker
# that restarted without its state): re-joining cures them, and redelivery is harmless.
GROUP_GONE = frozenset({
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError._ASSIGNMENT_LOST, KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
})


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """The offsets to commit after `messages`: one past the highest per partition."""
    high: dict[tuple[str, int], int] = {}
    for m in messages:
        topic, partition, offset = m.topic(), m.partition(), m.offset()
        # Consumed (non-error) messages always carry their topic, partition and offset.
        assert topic is not None and partition is not None and offset is not None
        key = (topic, partition)
        previous = high.get(key)
        if previous is not None and offset <= previous:
            # Offsets within one partition only increase: anything else is a bug upstream.
            raise RuntimeError(f"offset went backwards on {key}: {offset} after {previous}")
        high[key] = offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(high.items())]


def commit_after_write(consumer: Consumer, messages: Sequence[Message], service: str) -> bool:
    """Commit past `messages` (their outputs are written); False when the group's generation was
    gone (logged), any other commit error raises."""
    try:
        consumer.commit(offsets=next_offsets(messages), asynchronous=False)
    except KafkaException as exc:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is None or err.code() not in GROUP_GONE:
            raise
        log.warning("%s: commit of %d messages refused (%s): re-joining the group; the batch may be redelivered",
                    service, len(messages), err.name())
        return False
    return True


def run_batches(
    consumer: Consumer,
    topics: list[str],
    handle: BatchHandler,
    health: HealthState,
    stop: threading.Event,
    max_batch: int = 1000,
    max_wait_s: float = 0.0,
    poll_timeout_s: float = 0.2,
    # Fixed partitions to `assign()` instead of subscribing (a per-line actuator): no group
    # membership, so no rebalance; offsets are still committed under the consumer's group.id.
    assignment: list[TopicPartition] | None = None,
    idle_stop: threading.Event | None = None,
    group: str = "",
    lag_interval_s: float = 5.0,
) -> None:
    """Consume `topics` until `stop` is set, committing each batch after `handle` succeeds; once
    `idle_stop` is set, also stop at the first poll that brings nothing (drained: what producers
    sent before it was set is handled, e.g. the audit events of services that already stopped).

    Metrics (``health.metrics``): messages handled per topic, batch sizes, and every
    ``lag_interval_s`` the consumer lag of ``group`` (pipeline.kafka.lag)."""
    metrics = health.metrics
    consumed = metrics.counter("linesight_messages_consumed")
    sizes = metrics.histogram("linesight_batch_size").labels(health.service)
    lag = LagGauge(metrics.gauge("linesight_consumer_lag"), group or health.service)
    lag_at = time.monotonic()

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s assigned %s", health.service, [f"{p.topic}:{p.partition}" for p in partitions])
        health.set_ready(True)

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        health.set_ready(False)

    pending: list[Message] = []
    last: dict[tuple[str | None, int | None], int] = {}  # pending's last offset per partition
    first_at = 0.0
    quiet_since: float | None = None

    def flush(commit: bool = True) -> None:
        handle(pending)
        if commit:
            commit_after_write(consumer, pending, health.service)
        health.tick(processed=health.snapshot().get("processed", 0) + len(pending))
        sizes.observe(len(pending))
        for topic, n in Counter(m.topic() or "" for m in pending).items():
            consumed.labels(health.service, topic).inc(n)
        pending.clear()
        last.clear()

    if assignment is None:
        consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
    else:
        consumer.assign(assignment)
        on_assign(consumer, assignment)
    try:
        while not stop.is_set():
            room = max(1, max_batch - len(pending))
            got = consumer.consume(num_messages=room, timeout=poll_timeout_s)
            if idle_stop is not None and idle_stop.is_set() and health.snapshot().get("ready", False):
                # Drained once nothing came for longer than a fetch may wait at the broker.
                now = time.monotonic()
                quiet_since = now if got or quiet_since is None else quiet_since
                if now - quiet_since >= DRAIN_QUIET_S:
                    break
            for m in got:
                err = m.error()
                if err is None:
                    where, offset = (m.topic(), m.partition()), m.offset() or 0
                    if where in last and offset <= last[where]:  # offsets only increase within one log
                        log.warning("%s: %s:%s starts over at offset %s: its log was re-created",
                                    health.service, *where, offset)
                        flush(commit=False)
                    if not pending:
                        first_at = time.monotonic()
                    pending.append(m)
                    last[where] = offset
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s consumer error: %s", health.service, err)
            if pending and (len(pending) >= max_batch or time.monotonic() - first_at >= max_wait_s):
                flush()
            health.tick()
            if time.monotonic() - lag_at >= lag_interval_s:
                lag.update(consumer_lag(consumer))
                lag_at = time.monotonic()
        if pending:
            flush()
    finally:
        consumer.close()
