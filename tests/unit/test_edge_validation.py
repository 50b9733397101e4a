"""Every input is validated at the edge (issue 13): absurd metadata and images are refused with a
reason and their units rejected, frames with nothing to inspect never pass, a unit id seen twice
is an alarm and a reject, and a late reject still wins over a pass before the gate."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from support import Msg, eventually_async

from pipeline.actuation.clock import ManualClock
from pipeline.actuation.gate import SimulatedGate
from pipeline.actuation.scheduler import DecisionKind, FireCause, GateEvent, Outcome, RejectScheduler
from pipeline.actuation.timing_model import UnitRef
from pipeline.analytics.sink import ClickHouseSink
from pipeline.core.times import NS_PER_MS, NS_PER_S, datetime_from_ns
from pipeline.model.preprocess import prepare_image
from pipeline.settings import Settings
from pipeline.settings.actuation import LineTimingSettings
from pipeline.wire.codec import decode_rgb, encode_jpeg, encode_png, nothing_to_inspect, open_frame
from pipeline.wire.messages import (
    H_CAPTURE_NS,
    H_DLQ_REASON,
    H_UNIT,
    MAX_UNIT_ID_CHARS,
    FrameMeta,
    InspectionResult,
    MessageError,
    RejectCommand,
    header_value,
    safe_unit_id,
)
from streams.processor import Frame, InspectionProcessor
from streams.triton_client import ModelInfo, Scored, ScoreOutcome

T0 = 1_700_000_000 * NS_PER_S
META = FrameMeta("u-1", "line-1", "cam-1", "tablet-round-white-10mm", T0, "image/png", "LOT-1")


def headers(**replace: bytes) -> list[tuple[str, bytes]]:
    h = dict(META.to_headers())
    h.update({k.replace("_", "-"): v for k, v in replace.items()})
    return list(h.items())


# ---------------------------------------------------------------------------------- frame metadata


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({H_CAPTURE_NS: b"99999999999999999999999999"}, "out of range"),
        ({H_CAPTURE_NS: str(2**63).encode()}, "not an epoch-ns time"),
        ({H_UNIT: b"u" * 10_000}, "at most 4096"),
        ({H_UNIT: b"u" * (MAX_UNIT_ID_CHARS + 1)}, "at most 256"),
        ({H_UNIT: b"u-\x00-1"}, "control"),
        ({H_UNIT: b"u-\x1b[2J"}, "control"),
        ({"ls-product": b"../../etc"}, "not a product id"),
        ({"ls-line": b" line-1"}, "leading or trailing"),
        ({"content-type": b"image/gif"}, "unsupported content-type"),
    ],
)
def test_absurd_frame_metadata_is_refused_with_the_reason(bad: dict[str, bytes], reason: str) -> None:
    h = dict(META.to_headers()) | bad
    with pytest.raises(MessageError, match=reason):
        FrameMeta.from_headers(list(h.items()))


def test_capture_time_must_lie_near_the_broker_time() -> None:
    h = META.to_headers()
    assert FrameMeta.from_headers(h, ref_ns=T0 + 10 * NS_PER_S) == META  # 10 s in transit: fine
    with pytest.raises(MessageError, match="ahead of the broker time"):
        FrameMeta.from_headers(h, ref_ns=T0 - 60 * NS_PER_S)
    with pytest.raises(MessageError, match="stale frame"):
        FrameMeta.from_headers(h, ref_ns=T0 + 2 * 3600 * NS_PER_S)
    with pytest.raises(MessageError, match="repeated with different values"):
        FrameMeta.from_headers([*h, (H_UNIT, b"u-2")])


def test_verdict_messages_are_held_to_the_same_bounds() -> None:
    cmd = RejectCommand("u-1", "line-1", "cam", "LOT", "model", "crack", T0, T0 + 1)
    doc = json.loads(cmd.to_json())
    for field, value, reason in [
        ("capture_ns", 10**26, "int64"),
        ("capture_ns", -5, "epoch-ns"),
        ("unit_id", "u" * 10_000, "at most 256"),
        ("unit_id", "a\nb", "control"),
        ("cause", "whatever", "is not one of"),
        ("issued_ns", True, "not an integer"),
    ]:
        with pytest.raises(MessageError, match=reason):
            RejectCommand.from_json(json.dumps(doc | {field: value}))
    with pytest.raises(MessageError, match="finite"):
        InspectionResult.from_json(_result_json(score=float("nan")))
    assert safe_unit_id("u-1") == "u-1"
    assert safe_unit_id("u" * 10_000).startswith("invalid-") and len(safe_unit_id("x\x00")) == 24


def test_datetime_conversion_raises_a_value_error_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside the datetime range"):
        datetime_from_ns(99999999999999999999999999)
    assert datetime_from_ns(2**63 - 1).year == 2262


# ---------------------------------------------------------------------------------- images


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height (no pixel data): what a decompression
    bomb's header looks like, without allocating anything."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(20_000, 20_000), (8_000, 8_000), (5_000, 4_000)])
def test_oversized_pixel_count_is_refused_from_the_header(size: tuple[int, int]) -> None:
    data = png_header_only(*size)
    for decode in (open_frame, decode_rgb, prepare_image, nothing_to_inspect):
        with pytest.raises(ValueError, match="larger than|exceeds limit"):
            decode(data)


def test_tiny_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="smaller than 32 px"):
        open_frame(encode_png(Image.new("RGB", (8, 400))))


def textured(size: int = 160) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(40, 200, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "image, reason",
    [
        (Image.new("RGB", (160, 160), (128, 128, 128)), "blank"),
        (Image.new("RGB", (160, 160), (0, 0, 0)), "blank"),
        (Image.new("L", (4000, 4000), 255), "blank"),
        (Image.new("RGB", (160, 160), (255, 255, 255)), "blank"),
    ],
)
def test_frames_with_nothing_to_inspect_are_named(image: Image.Image, reason: str) -> None:
    assert reason in (nothing_to_inspect(encode_png(image)) or "")


def test_saturated_and_dark_frames_are_named_textured_ones_are_not() -> None:
    px = np.full((160, 160), 255, np.uint8)
    px[:40] = np.random.default_rng(1).integers(0, 255, (40, 160), dtype=np.uint8)
    assert "overexposed" in (nothing_to_inspect(encode_png(Image.fromarray(px))) or "")
    dark = np.zeros((160, 160), np.uint8)
    dark[:10] = px[:10]  # 94 % black
    assert "dark" in (nothing_to_inspect(encode_png(Image.fromarray(dark))) or "")
    assert nothing_to_inspect(encode_png(textured())) is None
    assert nothing_to_inspect(encode_jpeg(textured())) is None


# ---------------------------------------------------------------------------------- the worker


class PassEverything:
    """A model that scores every frame as good: the edge must keep the bad frames from it."""

    def __init__(self) -> None:
        self.seen = 0

    async def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        return ModelInfo(model, "tablet_classifier", {3: ("good", "crack")})

    async def score(self, model: str, images: list[bytes]) -> list[ScoreOutcome]:
        self.seen += len(images)
        return [Scored(0.01, {"good": 0.99, "crack": 0.01}, 0.5, 0.5, 3, "tablet_classifier") for _ in images]

    async def measure(self, model: str, images: list[bytes], params_json: bytes) -> list[object]:
        raise AssertionError("no measurements here")


async def test_worker_rejects_refused_and_blank_frames_with_the_reason() -> None:
    settings = Settings()
    k = settings.kafka
    good = encode_png(textured())
    cases: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {
        "good": (good, headers(ls_unit_id=b"good")),
        "grey": (encode_png(Image.new("RGB", (160, 160), (120, 120, 120))), headers(ls_unit_id=b"grey")),
        "black": (encode_jpeg(Image.new("RGB", (160, 160))), headers(ls_unit_id=b"black", content_type=b"image/jpeg")),
        "white": (encode_png(Image.new("L", (160, 160), 255)), headers(ls_unit_id=b"white")),
        "huge": (png_header_only(8000, 8000), headers(ls_unit_id=b"huge")),
        "future": (good, headers(ls_unit_id=b"future", ls_capture_ns=b"99999999999999999999999999")),
        "long": (good, headers(ls_unit_id=b"L" * 10_000)),
        "ctrl": (good, headers(ls_unit_id=b"c\x07")),
    }
    frames = [Frame(u.encode()[:50], img, h, "frames", 0, i, T0 + NS_PER_S) for i, (u, (img, h)) in enumerate(cases.items())]
    scorer = PassEverything()
    out = await InspectionProcessor(settings, scorer, worker="w").process(frames)

    results = [json.loads(o.value) for o in out if o.topic == k.topic_results]
    assert len(results) == len(frames) and scorer.seen == 1
    by_unit = {r["unit_id"]: r for r in results}
    assert by_unit["good"]["verdict"] == "pass"
    for r in results:
        InspectionResult.from_json(json.dumps(r))  # every result the worker writes decodes
        if r["unit_id"] != "good":
            assert (r["verdict"], r["cause"], r["inspected"]) == ("reject", "failsafe", False), r
            assert r["error"], r
    assert "blank" in by_unit["grey"]["error"] and "blank" in by_unit["black"]["error"]
    assert "blank" in by_unit["white"]["error"] and "larger than" in by_unit["huge"]["error"]
    assert "out of range" in by_unit["future"]["error"]
    # unusable ids become the surrogate the actuator admits the unit by
    assert by_unit[safe_unit_id("L" * 10_000)]["error"].startswith("header 'ls-unit-id'")
    assert "control" in by_unit[safe_unit_id("c\x07")]["error"]
    rejects = [json.loads(o.value)["unit_id"] for o in out if o.topic == k.topic_rejects]
    assert sorted(rejects) == sorted(u for u in by_unit if u != "good")
    reasons = [header_value(o.headers, H_DLQ_REASON) for o in out if o.topic == k.topic_deadletter]
    assert len(reasons) == len(frames) - 1 and all(reasons)
    # A refused or blank frame gets no reject thumbnail: it would show nothing, and a flood of
    # them must not cost a decode each.
    assert not [o for o in out if o.topic == k.topic_reject_images]


# ---------------------------------------------------------------------------------- the actuator

SPEED = LineTimingSettings(conveyor_speed_mm_s=250.0, camera_to_gate_mm=500.0, gate_window_mm=10.0, verdict_margin_ms=20.0)


def cmd(u: UnitRef, action: str) -> dict[str, object]:
    return {"unit_id": u.unit_id, "line": u.line, "capture_ns": u.capture_ns, "lot": u.lot, "action": action}


async def test_second_capture_of_a_unit_id_rejects_both_and_is_a_conflict() -> None:
    clock = ManualClock()
    gate = SimulatedGate(clock)
    events: list[GateEvent] = []
    sched = RejectScheduler({"line-1": SPEED}, gate, clock=clock, on_event=events.append)
    sched.start()
    try:
        t0 = clock.now_ns()
        first = UnitRef("line-1", "u-7", t0, None, "LOT")
        second = UnitRef("line-1", "u-7", t0 + 100 * NS_PER_MS, None, "LOT")
        assert sched.admit(first).kind is DecisionKind.ACCEPTED
        assert sched.admit(first).kind is DecisionKind.DUPLICATE  # redelivered capture: no alarm
        assert sched.submit(cmd(first, "pass")).kind is DecisionKind.ACCEPTED
        conflict = sched.admit(second)
        assert conflict.kind is DecisionKind.CONFLICT and "captured again" in conflict.reason
        assert sched.admit(second).kind is DecisionKind.DUPLICATE  # the second, redelivered
        assert sched.submit(cmd(second, "pass")).kind is DecisionKind.DUPLICATE  # cannot unreject
        await clock.advance(3 * NS_PER_S)
        await eventually_async(lambda: len(events) == 2, timeout_s=5.0, what="both units at the gate", poll_s=0.005)
        assert sorted(gate.fired) == ["u-7", f"u-7~{second.capture_ns}"]
        assert all(e.outcome is Outcome.FIRED and e.cause == FireCause.FAILSAFE for e in events)
        assert all("both units rejected" in e.reason for e in events)
        # after the gate: a third capture is still an alarm, and that unit is still rejected
        third = UnitRef("line-1", "u-7", clock.now_ns(), None, "LOT")
        assert sched.admit(third).kind is DecisionKind.CONFLICT
    finally:
        await sched.stop()


async def test_reject_after_a_pass_and_after_the_cutoff_still_fires_before_the_gate() -> None:
    clock = ManualClock()
    gate = SimulatedGate(clock)
    events: list[GateEvent] = []
    sched = RejectScheduler({"line-1": SPEED}, gate, clock=clock, on_event=events.append)
    sched.start()
    try:
        t0 = clock.now_ns()
        u = UnitRef("line-1", "u-9", t0, None, "LOT")
        sched.admit(u)
        assert sched.submit(cmd(u, "pass")).kind is DecisionKind.ACCEPTED
        await clock.advance_to(t0 + 1990 * NS_PER_MS)  # past the 1.98 s cutoff, before the 2 s fire time
        assert sched.submit(cmd(u, "reject")).kind is DecisionKind.SCHEDULED
        await clock.advance(NS_PER_S)
        await eventually_async(lambda: len(events) == 1, timeout_s=5.0, what="the unit at the gate", poll_s=0.005)
        assert gate.fired == ["u-9"] and events[0].outcome is Outcome.FIRED
        refused = sched.submit(cmd(UnitRef("line-1", "x" * 300, t0, None, "LOT"), "reject"))
        assert refused.kind is DecisionKind.REFUSED and "at most 256" in refused.reason
    finally:
        await sched.stop()


# ---------------------------------------------------------------------------------- the sink


class RecordingClient:
    """Stands in for ClickHouse: keeps the rows of every insert."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, object]]] = {}

    def insert_json_rows(self, table: str, rows: list[dict[str, object]], settings: dict[str, str] | None = None) -> None:
        self.rows.setdefault(table.split(".")[-1], []).extend(rows)

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the sink should not call {name} for these messages")


def _result_json(**change: object) -> bytes:
    r = InspectionResult("u-1", "line-1", "cam", "p", "LOT", "pass", "model", True, "none", 0.1, 0.5,
                         "m", "1", T0, T0, T0, "w")
    return json.dumps(json.loads(r.to_json()) | change).encode()


def test_sink_stores_a_dead_letter_for_an_absurd_timestamp_and_keeps_going() -> None:
    settings = Settings()
    k = settings.kafka
    client = RecordingClient()
    sink = ClickHouseSink(settings, client)  # type: ignore[arg-type]
    msgs = [
        Msg(k.topic_results, _result_json(capture_ns=99999999999999999999999999), 0),
        Msg(k.topic_actuations, json.dumps({"unit_id": "u", "line": "l", "lot": "", "cause": "model", "defect": "x",
                                            "capture_ns": 2**63 + 1, "command_issued_ns": 1, "fired_ns": 1,
                                            "actuator": "a"}).encode(), 0),
        Msg(k.topic_reject_images, b"\xff\xd8jpeg", 0,
            headers=[(H_UNIT, b"u"), (H_CAPTURE_NS, b"9" * 30)]),
    ]
    sink.write(msgs)  # type: ignore[arg-type]
    dead = client.rows["dead_letters"]
    assert len(dead) == 3 and set(client.rows) == {"dead_letters"}
    assert all(r["stage"] == "sink" and "sink could not decode" in str(r["reason"]) for r in dead)
    assert "int64" in str(dead[0]["reason"]) and "datetime range" in str(dead[2]["reason"])


def test_thumbnails_of_refused_frames_are_not_decoded() -> None:
    from pipeline.wire.codec import thumbnail_jpeg

    assert thumbnail_jpeg(png_header_only(20_000, 20_000), 128) is None
    small = thumbnail_jpeg(encode_png(textured(400)), 128)
    assert small is not None and Image.open(io.BytesIO(small)).size == (128, 128)
