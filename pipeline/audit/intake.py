"""Audit events on their way to the one appender: the message, and the services' submitter.

Why a topic between the services and the trail (docs/audit.md, "One writer"): a chain must have
exactly one writer and a total order, and only that writer may hold the trail key. Every service
(sink, dashboard, the CLI's GMP actions) submits its events to ``kafka.topic_audit_events``,
keyed by chain, so a chain's events keep their order in one partition; the audit service
(`pipeline.audit.appender`) appends them. The topic keeps them forever: an event the broker
acknowledged is not lost while the audit service is down, it is appended when it runs again.

``event_id`` makes the append idempotent: a redelivered or re-submitted event is appended once.
A decision's id is derived from its chain and subject (one record per unit and chain), any
other event's is random.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.audit.record import DECISION_ACTION, GENESIS, SEAL_ACTION, AuditEvent, make_record, utcnow
from pipeline.core.times import datetime_from_ns, now_ns, ns_from_datetime
from pipeline.kafka.clients import RenewingProducer, flush_or_raise
from pipeline.settings import Settings
from pipeline.wire.messages import JsonMessage, MessageError

_ID_CHARS = 200  # an event id; a decision's carries its chain and subject


@dataclass(frozen=True)
class AuditEventMessage(JsonMessage):
    """One audit event submitted for appending (topic ``linesight.audit-events``, keyed by chain).

    The fields are those of the record it becomes (docs/audit.md, "The record") less its place in
    the chain, which only the appender gives. ``time_ns`` is when it happened (0: when appended);
    ``source`` is the submitting service and host, for the dead letter of a refused event."""

    event_id: str
    chain: str
    action: str
    subject: str
    user: str
    role: str
    old_value: str
    new_value: str
    reason: str
    detail: dict[str, object]
    time_ns: int
    source: str
    sent_ns: int

    def problem(self) -> str | None:
        """What the appender refuses beyond the schema: an empty chain, action or id, an oversized id,
        a seal record, anything the record it becomes cannot hold."""
        for name in ("event_id", "chain", "action"):
            value = getattr(self, name)
            if not value.strip():
                return f"empty {name}"
        if len(self.event_id) > _ID_CHARS:
            return f"event_id of {len(self.event_id)} characters (at most {_ID_CHARS})"
        if self.action == SEAL_ACTION:  # it vouches for the chain's head: only the appender writes one
            return f"{SEAL_ACTION} records are the audit service's own, never submitted"
        return record_problem(self.chain, self.event())

    def event(self) -> AuditEvent:
        return AuditEvent(
            self.action, subject=self.subject, user=self.user, role=self.role, old_value=self.old_value,
            new_value=self.new_value, reason=self.reason, detail=dict(self.detail),
            time=datetime_from_ns(self.time_ns) if self.time_ns else None,
        )


def record_problem(chain: str, event: AuditEvent) -> str | None:
    """Why ``event`` cannot become a record of ``chain`` (a value its hash or its JSON cannot take:
    NaN, a lone surrogate), None when it can: refused where it arises, never a poison message that
    stops the appender."""
    try:
        make_record(chain, 0, GENESIS, event, utcnow()).to_json()
    except (TypeError, ValueError, UnicodeError) as exc:
        return f"not a recordable event: {exc}"
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def event_id_for(chain: str, event: AuditEvent) -> str:
    """A decision's id is its place in the rules (one record per unit and chain): a redelivered
    result submits the same id. Any other event is new each time it is submitted."""
    if event.action == DECISION_ACTION and event.subject:
        return f"decision:{chain}:{event.subject}"[:_ID_CHARS]
    return uuid.uuid4().hex


def to_message(chain: str, event: AuditEvent, event_id: str, source: str) -> AuditEventMessage:
    """The event as submitted; values become text as `pipeline.audit.record.make_record` makes them."""
    when = event.time
    return AuditEventMessage(
        event_id=event_id, chain=chain, action=event.action, subject=_text(event.subject), user=_text(event.user),
        role=_text(event.role), old_value=_text(event.old_value), new_value=_text(event.new_value),
        reason=_text(event.reason), detail=dict(event.detail or {}),
        time_ns=ns_from_datetime(when) if when is not None else 0,
        source=source, sent_ns=now_ns(),
    )


@dataclass
class EventSubmitter:
    """Submits events to the audit-events topic and waits for the broker's acknowledgement
    (`flush`): acknowledged means durable (unlimited retention), not yet appended."""

    settings: Settings
    source: str = field(default_factory=socket.gethostname)
    producer: RenewingProducer | None = None

    def __post_init__(self) -> None:
        self.topic = self.settings.kafka.topic_audit_events
        self.timeout_s = max(1.0, self.settings.audit.publish_timeout_s)
        if self.producer is None:
            conf: dict[str, Any] = {"message.timeout.ms": max(1000, int(self.timeout_s * 1000))}
            self.producer = RenewingProducer(self.settings.kafka, "linesight-audit-events", **conf)

    def submit(self, events_by_chain: Mapping[str, Sequence[AuditEvent]]) -> dict[str, list[str]]:
        """Produce every event (in order within its chain) and flush; returns their ids by chain.
        Raises `MessageError` for an event the contract refuses (nothing of it is sent) and
        KafkaException when the broker did not acknowledge them all in time."""
        assert self.producer is not None
        messages = [(c, to_message(c, ev, event_id_for(c, ev), self.source))
                    for c, evs in events_by_chain.items() for ev in evs]
        encoded = []
        for chain, msg in messages:
            problem = msg.problem()
            if problem:
                raise MessageError(f"refusing to submit audit event {msg.action} to {chain}: {problem}")
            encoded.append((chain, msg.to_json()))
        for chain, value in encoded:
            self.producer.produce(self.topic, key=chain.encode(), value=value)
            self.producer.poll(0)
        flush_or_raise(self.producer, self.timeout_s)
        ids: dict[str, list[str]] = {c: [] for c in events_by_chain}
        for chain, msg in messages:
            ids[chain].append(msg.event_id)
        return ids

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()
