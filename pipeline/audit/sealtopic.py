"""Reading the signed seals back from the Kafka topic ``linesight.audit-seals`` (docs/audit.md).

The topic is the second anchor (unlimited retention): `linesight audit verify` reads every
statement on it, from the beginning of every partition, and checks the chains against them as
against the anchor file, and reports a statement one copy holds and the other does not. The
audit service (`linesight audit serve`) copies the topic's statements into its anchor file after
every sealing round, so a restored or replaced anchor volume holds every seal again within one
interval.

Reading uses ``assign()`` (no consumer-group membership, nothing committed): a partition is read
once the broker reports its end (``enable.partition.eof``), all within a deadline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.audit.seals import AnchorFile, SealStatement, TrailKey
from pipeline.kafka.clients import client_config
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)


class SealTopicError(RuntimeError):
    """The seal topic could not be read to its end (broker unreachable, topic missing, deadline)."""


@dataclass
class SealTopicReader:
    """Reads a seal topic from the beginning, then on from where the last read ended."""

    kafka: KafkaSettings
    topic: str
    client_id: str = "linesight-audit-seals-reader"
    positions: dict[int, int] = field(default_factory=dict)  # partition -> next offset

    def read(self, timeout_s: float = 30.0) -> tuple[list[SealStatement], list[str]]:
        """The statements after the last read (all of them the first time), and a note for each
        message that is not a statement. Raises `SealTopicError` unless every partition is read
        to its end within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        # group.id is required by the client but unused: assign() joins no group, nothing is committed.
        conf = client_config(self.kafka) | {
            "group.id": f"{self.client_id}-unused", "client.id": self.client_id, "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
        }
        try:
            consumer = Consumer(conf)
        except KafkaException as exc:
            raise SealTopicError(f"cannot create a consumer for {self.topic}: {exc}") from exc
        try:
            return self._read(consumer, deadline, timeout_s)
        finally:
            consumer.close()

    def _read(self, consumer: Consumer, deadline: float, timeout_s: float) -> tuple[list[SealStatement], list[str]]:
        brokers = self.kafka.bootstrap_servers
        try:
            meta = consumer.list_topics(self.topic, timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:
            raise SealTopicError(f"cannot reach Kafka {brokers} to read {self.topic}: {exc}") from exc
        info = meta.topics.get(self.topic)
        if info is None or info.error is not None or not info.partitions:
            why = info.error if info is not None and info.error is not None else "no such topic"
            raise SealTopicError(f"cannot read the seal topic {self.topic} on {brokers}: {why}")
        parts = sorted(info.partitions)
        # "To its end" is the end when the read began: a partition the sealer keeps appending to
        # (a heartbeat every interval) would otherwise never report its end.
        ends: dict[int, int] = {}
        for p in parts:
            try:
                ends[p] = consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                         timeout=max(0.1, deadline - time.monotonic()))[1]
            except KafkaException as exc:
                raise SealTopicError(f"cannot read the end of {self.topic}[{p}] on {brokers}: {exc}") from exc
        consumer.assign([TopicPartition(self.topic, p, self.positions.get(p, OFFSET_BEGINNING)) for p in parts])
        pending = {p for p in parts if self.positions.get(p, 0) < ends[p]}
        statements: list[SealStatement] = []
        bad: list[str] = []
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SealTopicError(f"the seal topic {self.topic} on {brokers} was not read to its end within "
                                     f"{timeout_s:g} s (partitions {sorted(pending)} unfinished)")
            msg = consumer.poll(min(left, 1.0))
            if msg is None:
                continue
            err = msg.error()
            part, offset = msg.partition() or 0, msg.offset() or 0
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(part)
                    self.positions[part] = offset
                    continue
                if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                    raise SealTopicError(f"reading the seal topic {self.topic} on {brokers}: {err}")
                log.debug("seal topic %s: %s", self.topic, err)
                continue
            self.positions[part] = offset + 1
            if offset + 1 >= ends.get(part, 0):
                pending.discard(part)
            where = f"{self.topic}[{part}]@{offset}"
            try:
                statements.append(SealStatement.from_json(msg.value() or b""))
            except (ValueError, KeyError, TypeError) as exc:
                bad.append(f"{where}: not a seal statement ({exc})")
        return statements, bad


def read_seal_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0) -> tuple[list[SealStatement], list[str]]:
    """Every statement on ``topic``, from the beginning (see `SealTopicReader.read`)."""
    return SealTopicReader(kafka, topic, client_id="linesight-audit-verify").read(timeout_s)


class SealMirror:
    """The sealer's copy of the seal topic into its anchor file, run after every sealing round:
    statements that verify with the trail key and are not in the file yet are appended, so the
    file holds every seal the topic kept, also after the volume was restored from an older backup.
    A statement that does not verify is not copied (`verify` reports it from the topic)."""

    def __init__(self, reader: SealTopicReader, anchor: AnchorFile, key: TrailKey, timeout_s: float = 30.0) -> None:
        self.reader, self.anchor, self.key, self.timeout_s = reader, anchor, key, timeout_s
        self._known: set[bytes] = set()
        self._offset = 0

    def __call__(self) -> int:
        """One round: how many statements were copied into the anchor file."""
        mine, _, self._offset = self.anchor.read_from(self._offset)
        self._known.update(s.to_json() for s in mine)
        statements, bad = self.reader.read(self.timeout_s)
        for note in bad:
            log.warning("seal topic: %s", note)
        new: list[SealStatement] = []
        for s in statements:
            ident = s.to_json()
            if ident in self._known:
                continue
            if not s.valid(self.key):
                self._known.add(ident)  # reported once
                log.error("seal topic %s holds a seal of %s#%d that does not verify with the trail key %s: not copied "
                          "(run `linesight audit verify`)", self.reader.topic, s.chain, s.head_seq, self.key.key_id)
                continue
            self._known.add(ident)
            new.append(s)
        self.anchor.append(new)
        if new:
            log.info("copied %d seal statement(s) from %s into %s", len(new), self.reader.topic, self.anchor.path)
        return len(new)
