"""The worker judges a frame's capture time against the broker time of its message, not the time
it happens to be read: a backlog consumed hours after an outage is inspected, not refused as stale."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from test_edge_validation import META, PassEverything, textured

from pipeline.core.times import NS_PER_MS, NS_PER_S, now_ns
from pipeline.settings import Settings
from pipeline.wire.codec import encode_png
from pipeline.wire.messages import FrameMeta
from streams.app import _frame
from streams.processor import InspectionProcessor


@dataclass
class FakeMessage:
    """The fields of a faust Message that the worker reads (timestamp: seconds, from Kafka's ms)."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp: float | None
    topic: str = "linesight.frames"
    partition: int = 0
    offset: int = 0


@dataclass
class FakeEvent:
    message: FakeMessage
    extra: dict[str, Any] = field(default_factory=dict)


def event(capture_ns: int, broker_ms: int | None, unit: str) -> FakeEvent:
    meta = FrameMeta(unit, META.line, META.camera, META.product, capture_ns, META.content_type, META.lot)
    seconds = broker_ms / 1000.0 if broker_ms is not None else None
    return FakeEvent(FakeMessage(unit.encode(), encode_png(textured()), meta.to_headers(), seconds))


def test_the_frame_carries_the_broker_time_to_the_millisecond() -> None:
    broker_ms = 1_700_000_123_457
    frame = _frame(event(broker_ms * NS_PER_MS, broker_ms, "u-1"))
    assert frame.timestamp_ns == broker_ms * NS_PER_MS
    for none in (None, 0, -1):  # no timestamp on the record: judged by the receive time
        assert _frame(event(now_ns(), none, "u-2")).timestamp_ns is None


async def test_a_backlog_older_than_an_hour_is_inspected_a_capture_far_from_its_broker_time_is_not() -> None:
    settings = Settings()
    two_hours_ago_ms = (now_ns() - 2 * 3600 * NS_PER_S) // NS_PER_MS
    backlog = event(two_hours_ago_ms * NS_PER_MS - 50 * NS_PER_MS, two_hours_ago_ms, "backlog")
    stale = event(two_hours_ago_ms * NS_PER_MS, (now_ns() // NS_PER_MS), "stale")  # published 2 h after capture
    unstamped = event(two_hours_ago_ms * NS_PER_MS, None, "unstamped")  # no broker time: receive time
    frames = [_frame(e) for e in (backlog, stale, unstamped)]
    out = await InspectionProcessor(settings, PassEverything(), worker="w").process(frames)
    verdicts = {r["unit_id"]: r for r in (json.loads(o.value) for o in out if o.topic == settings.kafka.topic_results)}
    assert verdicts["backlog"]["verdict"] == "pass" and verdicts["backlog"]["inspected"] is True
    for unit in ("stale", "unstamped"):
        assert (verdicts[unit]["verdict"], verdicts[unit]["cause"]) == ("reject", "failsafe"), verdicts[unit]
        assert "stale frame" in verdicts[unit]["error"]
