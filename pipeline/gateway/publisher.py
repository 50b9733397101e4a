"""Camera gateways: publish frames to Kafka as encoded image bytes with metadata in headers.

Two sources: a simulated line that renders tablets at a set rate and defect mix, and a replay of
a dataset folder (docs/datasets.md). Ground truth, when known, goes to its own topic so
that reports can score verdicts while the model never sees it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import numpy as np

from pipeline.core.times import now_ns
from pipeline.datasets.folder import Dataset
from pipeline.imaging.catalog import sample_product
from pipeline.kafka.clients import RenewingProducer, flush_or_raise
from pipeline.kafka.partitioning import line_partition
from pipeline.settings import Settings
from pipeline.wire.codec import encode_png
from pipeline.wire.messages import CameraStatus, FrameMeta, GroundTruth, RejectCommand, dead_letter_headers

log = logging.getLogger(__name__)


def new_lot(line: str) -> str:
    """Line and UTC start time, at most 20 characters: a valid GS1 batch/lot (AI 10) to print."""
    stamp = f"{datetime.now(UTC):%y%m%d-%H%M%S}"
    return f"{line[: 20 - len(stamp) - 1]}-{stamp}"


# Frames go out at once (librdkafka's linger.ms is 5 for every producer here): each frame's verdict
# races its unit to the reject gate, and a frame (tens of KiB) gains nothing from waiting for a
# batch; while a request is in flight librdkafka batches what queued meanwhile anyway.
PRODUCER_CONFIG: dict[str, Any] = {"linger.ms": 0}


@dataclass
class PublishStats:
    published: int = 0
    defects: int = 0
    refused: int = 0


class FramePublisher:
    """Publishes frames and their ground truth; refuses frames over the size limit.

    A frame not yet acknowledged when the broker loses the producer's id (a restarted memory-only
    broker) is re-sent by a new producer (`RenewingProducer`), with its original capture time: the
    actuator judges it against that time (a unit already past the gate is a ``missed`` or late
    reject, never a pass), and a frame stored twice is the same capture (idempotent downstream).
    """

    def __init__(self, settings: Settings, producer: RenewingProducer | None = None) -> None:
        self._kafka = settings.kafka
        # Not `producer or ...`: a RenewingProducer with nothing in flight has len() 0, so it is falsy.
        self._producer = (
            producer if producer is not None else RenewingProducer(settings.kafka, "linesight-camera", **PRODUCER_CONFIG)
        )
        self.stats = PublishStats()
        self._errors: list[str] = []
        self.connect()

    def connect(self, timeout_s: float = 30.0) -> None:
        """Open the broker connection before the first unit, so its capture time is honest."""
        self._producer.list_topics(self._kafka.topic_frames, timeout=timeout_s)

    def _delivered(self, err: object, msg: object) -> None:
        if err is not None:
            self._errors.append(str(err))

    def publish(self, meta: FrameMeta, image: bytes, truth: GroundTruth | None = None) -> bool:
        if len(image) > self._kafka.max_message_bytes:
            log.error("frame %s is %d bytes, over the %d limit: refused", meta.unit_id, len(image), self._kafka.max_message_bytes)
            self.stats.refused += 1
            return False
        key = meta.unit_id.encode()
        headers = meta.to_headers()
        self._producer.produce(
            self._kafka.topic_frames, key=key, value=image, headers=headers, on_delivery=self._delivered,
        )
        # The same headers without the image, on the line's partition: what the line's actuator
        # admits the unit from (docs/scale.md, "Partitioning by line").
        self._producer.produce(
            self._kafka.topic_captures, key=meta.line.encode(), value=b"", headers=headers,
            on_delivery=self._delivered, partition=line_partition(self._kafka, meta.line),
        )
        if truth is not None:
            self.truth(truth)
        self._producer.poll(0)
        self.stats.published += 1
        return True

    def truth(self, truth: GroundTruth) -> None:
        """What a unit really is (simulated lines, replays): reports score verdicts against it."""
        self._producer.produce(self._kafka.topic_truth, key=truth.unit_id.encode(), value=truth.to_json(),
                               on_delivery=self._delivered)
        self.stats.defects += truth.label == "defect"

    def reject(self, command: RejectCommand) -> None:
        """A fail-safe reject from the gateway itself (a station that saw nothing usable)."""
        log.warning("unit %s fail-safe rejected at the gateway: %s", command.unit_id, command.reason,
                    extra={"unit_id": command.unit_id, "lot": command.lot, "line": command.line})
        # Keyed by line, as the worker's: one line's rejects stay in order for its gate.
        self._producer.produce(
            self._kafka.topic_rejects, key=command.line.encode(), value=command.to_json(), on_delivery=self._delivered,
            partition=line_partition(self._kafka, command.line),
        )
        self._producer.poll(0)

    def status(self, status: CameraStatus) -> None:
        """A station camera's health (`pipeline.gateway.camera_status`), keyed by its serial."""
        self._producer.produce(self._kafka.topic_camera_status, key=status.camera.encode(), value=status.to_json(),
                               on_delivery=self._delivered)
        self._producer.poll(0)

    def dead_letter(self, meta: FrameMeta, image: bytes, reason: str, stage: str) -> None:
        """Keep a frame no unit can take, with why (the dead-letter topic, as the worker's)."""
        log.warning("dead-lettered frame of %s: %s", meta.line, reason,
                    extra={"unit_id": meta.unit_id, "lot": meta.lot, "line": meta.line})
        headers = dead_letter_headers(meta.to_headers(), reason, stage, f"camera {meta.camera}")
        self._producer.produce(
            self._kafka.topic_deadletter,
            key=meta.unit_id.encode(),
            value=image,
            headers=headers,
            on_delivery=self._delivered,
        )
        self._producer.poll(0)

    def close(self) -> None:
        """Deliver everything and release the connection; raise if any frame was lost."""
        flush_or_raise(self._producer, 30.0)
        self._producer.close()
        if self._errors:
            raise RuntimeError(f"{len(self._errors)} frames were not delivered: {self._errors[0]}")


class SimulatedEncoder:
    """The conveyor encoder of a simulated line: counts advance with the belt at the line's speed.

    Only encoder-timed lines (``lines.<line>.counts_per_mm`` set) stamp counts on their frames.
    """

    def __init__(self, settings: Settings, line: str) -> None:
        timing = settings.lines.get(line)
        self.enabled = timing is not None and timing.counts_per_mm is not None
        self._counts_per_ns = (
            timing.conveyor_speed_mm_s * timing.counts_per_mm / 1e9 if timing is not None and timing.counts_per_mm else 0.0
        )
        self._start_ns = now_ns()

    def count_at(self, t_ns: int) -> int | None:
        return round((t_ns - self._start_ns) * self._counts_per_ns) if self.enabled else None


def _pace(stop: threading.Event, next_at: float) -> None:
    """Hold the line's rate: a unit passes the camera every 1/rate seconds."""
    delay = next_at - time.monotonic()
    if delay > 0:
        stop.wait(delay)


def run_simulated_line(
    settings: Settings,
    publisher: FramePublisher,
    stop: threading.Event,
    duration_s: float = 0.0,
    count: int = 0,
    lot: str | None = None,
) -> str:
    """Render and publish units until `stop`, `duration_s` (0 = no limit) or `count` units."""
    sim = settings.simulator
    lot = lot or new_lot(sim.line)
    rng = np.random.default_rng(sim.seed)
    encoder = SimulatedEncoder(settings, sim.line)
    interval = 1.0 / sim.rate_per_s
    today = datetime.now(UTC).date()
    start = next_at = time.monotonic()
    seq = 0
    while not stop.is_set():
        if count and seq >= count:
            break
        if duration_s and time.monotonic() - start >= duration_s:
            break
        _pace(stop, next_at)
        next_at += interval
        made = sample_product(rng, sim.product, sim.defect_rate, lot, seq, today)
        capture = now_ns()
        unit = f"{lot}-{seq:07d}"
        meta = FrameMeta(unit, sim.line, sim.camera, sim.product, capture, "image/png", lot, encoder.count_at(capture))
        truth = GroundTruth(
            unit, sim.line, lot, sim.product, "defect" if made.defect else "good", made.defect or "none", capture,
            source=f"simulator:{made.flag}" if made.flag else "simulator",
        )
        publisher.publish(meta, encode_png(made.image), truth)
        seq += 1
    return lot


def replay_dataset(
    settings: Settings,
    publisher: FramePublisher,
    dataset: Dataset,
    stop: threading.Event,
    rate_per_s: float = 0.0,
    lot: str | None = None,
) -> str:
    """Publish every image of a validated dataset as a frame (its label as ground truth)."""
    sim = settings.simulator
    lot = lot or new_lot(sim.line)
    encoder = SimulatedEncoder(settings, sim.line)
    next_at = time.monotonic()
    for seq, row in enumerate(dataset.rows):
        if stop.is_set():
            break
        if rate_per_s:
            _pace(stop, next_at)
            next_at += 1.0 / rate_per_s
        image = row.image.read_bytes()
        content_type = "image/jpeg" if image.startswith(b"\xff\xd8") else "image/png"
        capture = now_ns()
        unit = f"{lot}-{seq:07d}"
        meta = FrameMeta(unit, sim.line, sim.camera, row.product, capture, content_type, lot, encoder.count_at(capture))
        # Dataset rows are validated on load: their label is one of dataset.LABELS.
        label = cast(Literal["good", "defect"], row.label)
        truth = GroundTruth(
            unit, sim.line, lot, row.product, label, row.defect, capture, source=f"dataset:{dataset.relative(row)}"
        )
        publisher.publish(meta, image, truth)
    return lot
