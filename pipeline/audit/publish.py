"""Audit records onto the Kafka audit topic (``linesight.audit``), keyed by chain.

The topic is the copy of the trail kept outside ClickHouse: auditors and downstream archives
consume it, and the seals on it are anchors a rewritten table cannot match. ClickHouse stays the
record of truth: a CLI action whose record cannot be published in time says so on stderr.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pipeline.audit.record import AuditRecord
from pipeline.audit.seals import SealStatement
from pipeline.kafka.clients import RenewingProducer, flush_or_raise
from pipeline.settings import Settings

log = logging.getLogger(__name__)


class AuditPublisher:
    """The sink flushes it before committing a batch: a `RenewingProducer`, so a broker that
    restarted without this producer's id gets the records re-sent rather than stopping the sink."""

    def __init__(self, settings: Settings, producer: RenewingProducer | None = None,
                 timeout_s: float | None = None) -> None:
        self.topic = settings.kafka.topic_audit
        self.seal_topic = settings.kafka.topic_audit_seals
        self.timeout_s = timeout_s if timeout_s is not None else settings.audit.publish_timeout_s
        # Records not acknowledged within the publish timeout are reported, not waited on for minutes.
        conf: dict[str, Any] = {"message.timeout.ms": max(1000, int(self.timeout_s * 1000))}
        self._producer = (
            producer if producer is not None else RenewingProducer(settings.kafka, "linesight-audit", **conf)
        )

    def publish(self, records: Sequence[AuditRecord]) -> None:
        for r in records:
            self._producer.produce(self.topic, key=r.chain.encode(), value=r.to_json())
            self._producer.poll(0)

    def publish_seals(self, statements: Sequence[SealStatement]) -> None:
        """Signed seals onto the seal topic (unlimited retention): a copy of the anchor outside every
        LineSight host's disks, which `audit verify` reads back (`pipeline.audit.sealtopic`) and the
        sealer copies into its anchor file."""
        for s in statements:
            self._producer.produce(self.seal_topic, key=s.chain.encode(), value=s.to_json())
            self._producer.poll(0)

    def flush(self) -> None:
        flush_or_raise(self._producer, self.timeout_s)

    def close(self) -> None:
        """Release the producer's connections now (one-shot users; flush first)."""
        self._producer.close()


class BestEffortPublisher(AuditPublisher):
    """For one-shot CLI actions: a broker that does not answer is reported, not fatal."""

    def flush(self) -> None:
        try:
            super().flush()
        except Exception as exc:  # noqa: BLE001 - the record is stored in ClickHouse already
            log.warning("audit records stored in ClickHouse but not published to %s: %s", self.topic, exc)
