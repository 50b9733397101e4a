"""A judged frame read back from the broker, for the person deciding a review unit.

The worker keeps a JPEG only of the station frames that did not pass a unit; a person deciding a
multi-station unit wants every station's frame. Each result names where its frame sits on the
broker (`InspectionResult.frame_source`, ``topic:partition:offset``), so while the frames topic
keeps it (its retention) the frame is read back exactly: one message at that offset, accepted
only if its bytes hash to the result's `image_sha256` (the audited identity of the judged image).
"""

from __future__ import annotations

import hashlib
import threading
import uuid

from confluent_kafka import KafkaError, TopicPartition

from pipeline.kafka.clients import make_consumer
from pipeline.settings import KafkaSettings


class FrameUnavailable(LookupError):
    """The frame cannot be read back (gone past retention, another image, no broker); says why."""


def parse_source(source: str) -> tuple[str, int, int]:
    """``topic:partition:offset`` -> (topic, partition, offset); ValueError for anything else."""
    parts = source.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"not a frame source (topic:partition:offset): {source!r}")
    return parts[0], int(parts[1]), int(parts[2])


class BrokerFrames:
    """Reads single frames by offset with one consumer (no group commits), one read at a time."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float = 5.0) -> None:
        self._kafka = kafka
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._consumer = make_consumer(kafka, f"linesight-review-frames-{uuid.uuid4().hex[:8]}",
                                       "linesight-review-frames", **{"enable.partition.eof": True})

    def read(self, source: str, sha256: str) -> bytes:
        """The frame at `source`, whose bytes must hash to `sha256` (hex)."""
        try:
            topic, partition, offset = parse_source(source)
        except ValueError as exc:
            raise FrameUnavailable(str(exc)) from None
        with self._lock:
            self._consumer.assign([TopicPartition(topic, partition, offset)])
            try:
                msg = self._consumer.poll(self._timeout_s)
            finally:
                self._consumer.unassign()
        if msg is None:
            raise FrameUnavailable(f"the broker did not return {source} within {self._timeout_s:g} s")
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                raise FrameUnavailable(f"{source} is not on the broker (past the end of the partition)")
            raise FrameUnavailable(f"the broker refused {source}: {err.str()}")
        if msg.offset() != offset:  # the offset is gone (retention): the broker served a later one
            raise FrameUnavailable(f"{source} is no longer kept by the broker (its retention has passed)")
        data = msg.value() or b""
        if not sha256 or hashlib.sha256(data).hexdigest() != sha256:
            raise FrameUnavailable(f"the message at {source} is not the judged frame (sha256 differs)")
        return data

    def close(self) -> None:
        with self._lock:
            self._consumer.close()
