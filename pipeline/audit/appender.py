"""The audit service's appender: the one writer of every audit chain (docs/audit.md, "One writer").

It consumes the audit-events topic (`pipeline.audit.intake`) in a consumer group and appends each
batch to the trail directly (`AuditTrail.append_events`: hash chain, signature, seals, anchors,
the records' copy on the audit topic), then commits. Events are keyed by chain, so one partition
holds a chain's events in order and one group member appends them. A redelivered batch (a crash
between the insert and the commit) appends nothing twice: each record keeps its event's id. An
event that breaks the contract is dead-lettered with its reason, never appended and never allowed
to stop the service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import cast

from confluent_kafka import Message

from pipeline.audit.intake import AuditEventMessage
from pipeline.audit.record import AuditEvent
from pipeline.audit.trail import AuditTrail
from pipeline.core.health import HealthState
from pipeline.core.metrics import Metrics
from pipeline.kafka.clients import RenewingProducer, flush_or_raise, make_consumer
from pipeline.kafka.commit_loop import run_batches
from pipeline.settings import KafkaSettings, Settings
from pipeline.wire.messages import MessageError, dead_letter_headers

log = logging.getLogger(__name__)

STAGE = "audit-appender"


class AuditAppender:
    """Appends the submitted events of each consumed batch (`handle`, called by the commit loop)."""

    def __init__(self, trail: AuditTrail, dead_letters: RenewingProducer, kafka: KafkaSettings,
                 flush_timeout_s: float = 10.0, metrics: Metrics | None = None) -> None:
        self.trail = trail
        self.dead_letters = dead_letters
        self.deadletter_topic = kafka.topic_deadletter
        self.flush_timeout_s = flush_timeout_s
        self.appended = 0
        self.duplicates = 0
        self.refused = 0
        self._events = (metrics or Metrics()).counter("linesight_audit_events")

    def handle(self, messages: Sequence[Message]) -> None:
        accepted: list[tuple[str, str, AuditEvent]] = []  # chain, event id, event
        for m in messages:
            reason, msg = self._check(m)
            if msg is None:
                self._dead_letter(m, reason)
                continue
            accepted.append((msg.chain, msg.event_id, msg.event()))
        todo: dict[str, list[tuple[str, AuditEvent]]] = {}
        seen: set[str] = set()
        for chain, event_id, event in accepted:
            if event_id not in seen:  # submitted twice in one batch (a producer's retry)
                seen.add(event_id)
                todo.setdefault(chain, []).append((event_id, event))
        # Events already in the trail (a redelivered batch) are skipped by the append itself.
        written = sum(len(v) for v in self.trail.append_events(todo).values())
        self.appended += written
        self.duplicates += len(accepted) - written
        self._events.labels("appended").inc(written)
        self._events.labels("duplicate").inc(len(accepted) - written)
        flush_or_raise(self.dead_letters, self.flush_timeout_s)  # before the commit: a refusal is never lost

    @staticmethod
    def _check(m: Message) -> tuple[str, AuditEventMessage | None]:
        try:
            msg = AuditEventMessage.from_json(m.value())
        except MessageError as exc:
            return str(exc), None
        problem = msg.problem()
        if problem:
            return f"bad AuditEventMessage: {problem}", None
        key = m.key()
        # The key decides the partition, and one partition per chain is what orders it: an event keyed
        # otherwise could be appended by another group member at the same time.
        if key is None or key != msg.chain.encode():
            return f"audit event for chain {msg.chain!r} keyed {key!r}: events must be keyed by their chain", None
        return "", msg

    def _dead_letter(self, m: Message, reason: str) -> None:
        source = f"{m.topic()}:{m.partition()}:{m.offset()}"
        log.warning("audit event refused at %s: %s", source, reason)
        self.refused += 1
        self._events.labels("refused").inc()
        self.dead_letters.produce(self.deadletter_topic, key=m.key(), value=m.value() or b"",
                                  headers=dead_letter_headers(
                                      cast("list[tuple[str, bytes | None]] | None", m.headers()), reason, STAGE, source))
        self.dead_letters.poll(0)


def run_appender(
    settings: Settings, trail: AuditTrail, stop: threading.Event, health: HealthState,
    drained: threading.Event | None = None,
) -> AuditAppender:
    """Consume the audit-events topic until ``stop`` (or, once ``drained`` is set, until it has
    nothing more to read: the embedded stack's shutdown), committing after each appended batch."""
    if not trail.direct:
        raise ValueError("the audit appender must append directly (AuditTrail.from_settings(..., direct=True))")
    k = settings.kafka
    producer = RenewingProducer(k, "linesight-audit-appender")
    appender = AuditAppender(trail, producer, k, max(1.0, settings.audit.publish_timeout_s), health.metrics)
    consumer = make_consumer(k, settings.audit.appender_group, "linesight-audit-appender")
    try:
        run_batches(consumer, [k.topic_audit_events], appender.handle, health, stop,
                    max_batch=1000, max_wait_s=settings.audit.append_interval_s, poll_timeout_s=0.1,
                    idle_stop=drained)
    finally:
        producer.close()
    return appender
