"""A review unit's station frames read back from the real (embedded) broker by the offset its
result names (docs/review.md): exactly the judged bytes, refused when the message there is not
the judged image, when the offset is past the partition's end, or when the source is malformed."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest
from confluent_kafka import Producer

from pipeline.imaging.tablets import render_tablet
from pipeline.kafka.clients import client_config, flush_or_raise
from pipeline.kafka.topics import ensure_topics
from pipeline.review.frames import BrokerFrames, FrameUnavailable
from pipeline.settings import KafkaSettings, Settings
from pipeline.wire.codec import encode_png

TOPICS = [f for f in KafkaSettings.model_fields if f.startswith("topic_")]


def test_frames_come_back_by_offset_and_only_if_they_are_the_judged_image(
    broker: str, embedded_settings: Settings
) -> None:
    prefix = f"rf{uuid.uuid4().hex[:8]}"
    k = embedded_settings.kafka
    settings = embedded_settings.model_copy(update={"kafka": k.model_copy(update={
        "bootstrap_servers": broker, **{f: f"{prefix}.{getattr(k, f)}" for f in TOPICS}})})
    ensure_topics(settings)
    topic = settings.kafka.topic_frames
    frames = [encode_png(render_tablet(np.random.default_rng(i), "tablet-round-white-10mm", None, size=160))
              for i in range(3)]
    placed: list[tuple[int, int]] = []

    def delivered(err, msg) -> None:  # noqa: ANN001
        assert err is None, err
        placed.append((msg.partition(), msg.offset()))

    producer = Producer(client_config(settings.kafka))
    for i, data in enumerate(frames):
        producer.produce(topic, data, key=f"u{i}".encode(), partition=0, on_delivery=delivered)
    flush_or_raise(producer, 10)
    assert len(placed) == 3

    reader = BrokerFrames(settings.kafka, timeout_s=10)
    try:
        for data, (partition, offset) in zip(frames, placed, strict=True):
            source = f"{topic}:{partition}:{offset}"
            assert reader.read(source, hashlib.sha256(data).hexdigest()) == data
        partition, offset = placed[0]
        with pytest.raises(FrameUnavailable, match="not the judged frame"):
            reader.read(f"{topic}:{partition}:{offset}", hashlib.sha256(frames[1]).hexdigest())
        with pytest.raises(FrameUnavailable, match="not on the broker|within"):
            reader.read(f"{topic}:{partition}:{offset + 1000}", hashlib.sha256(frames[0]).hexdigest())
        with pytest.raises(FrameUnavailable, match="not a frame source"):
            reader.read("frames-without-offset", "00")
    finally:
        reader.close()
