"""The commit-after-write loop shared by the confluent-kafka services.

Messages accumulate until the batch is full or its oldest message waited `max_wait_s`; then the
handler writes its outputs (ClickHouse insert, produced messages flushed) and only when it
returns are the batch's offsets committed, synchronously. A handler
exception stops the service loudly without committing, so the batch is redelivered on restart
(sinks are idempotent under redelivery).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from pipeline.core.health import HealthState

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[Message]], None]


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


def run_batches(
    consumer: Consumer,
    topics: list[str],
    handle: BatchHandler,
    health: HealthState,
    stop: threading.Event,
    max_batch: int = 1000,
    max_wait_s: float = 0.0,
    poll_timeout_s: float = 0.2,
) -> None:
    """Consume `topics` until `stop` is set, committing each batch after `handle` succeeds."""

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s assigned %s", health.service, [f"{p.topic}:{p.partition}" for p in partitions])
        health.set_ready(True)

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        health.set_ready(False)

    pending: list[Message] = []
    first_at = 0.0

    def flush() -> None:
        handle(pending)
        consumer.commit(offsets=next_offsets(pending), asynchronous=False)
        health.tick(processed=health.snapshot().get("processed", 0) + len(pending))
        pending.clear()

    consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
    try:
        while not stop.is_set():
            room = max(1, max_batch - len(pending))
            for m in consumer.consume(num_messages=room, timeout=poll_timeout_s):
                err = m.error()
                if err is None:
                    if not pending:
                        first_at = time.monotonic()
                    pending.append(m)
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s consumer error: %s", health.service, err)
            if pending and (len(pending) >= max_batch or time.monotonic() - first_at >= max_wait_s):
                flush()
            health.tick()
        if pending:
            flush()
    finally:
        consumer.close()
