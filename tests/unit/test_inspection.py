"""Decision logic of the worker, with a scripted scorer standing in for Triton."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.settings import Settings
from pipeline.wire.codec import encode_png
from pipeline.wire.messages import H_DLQ_REASON, FrameMeta, RejectCommand, header_value
from streams.processor import Frame, InspectionProcessor
from streams.routing import ensemble_for
from streams.triton_client import Failed, ModelInfo, Scored, ScoreOutcome, UnknownModelError, parse_classes, verdict_for

# A real, textured frame: the worker decodes a thumbnail of every frame (nothing to inspect?).
# The scripted score rides after the PNG's end, where decoders do not look.
PNG = encode_png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
INFO = ModelInfo("tablet_inspector", "tablet_classifier", {3: ("good", "crack", "chip")})


class ScriptedScorer:
    """Returns the score written after the PNG signature (b'...score=0.9'), judged by version 3
    with thresholds [0.5, 0.5], or by version 4 with [0.3, 0.7] when the image says b'v4'."""

    def __init__(self, fail_model: bool = False, known: tuple[str, ...] = ("tablet_inspector",)) -> None:
        self.calls: list[int] = []
        self.models: list[str] = []
        self.fail_model = fail_model
        self.known = known

    async def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        if self.fail_model:
            raise ConnectionError("triton down")
        if model not in self.known:
            raise UnknownModelError(f"Triton serves no model {model!r}")
        return INFO

    async def score(self, model: str, images: list[bytes]) -> list[ScoreOutcome]:
        self.calls.append(len(images))
        self.models.append(model)
        out: list[ScoreOutcome] = []
        for image in images:
            if b"corrupt" in image:
                out.append(Failed("triton: cannot identify image file"))
                continue
            s = float(image.split(b"score=")[1].split(b" ")[0])
            probs = {"good": 1 - s, "crack": s * 0.3, "chip": s * 0.7}
            if b"nan-class" in image:
                probs["chip"] = float("nan")
            if b"v4" in image:
                out.append(Scored(s, probs, 0.3, 0.7, 4, "tablet_classifier"))
            else:
                out.append(Scored(s, probs, 0.5, 0.5, 3, "tablet_classifier"))
        return out


def frame(unit: str, image: bytes, product: str = "tablet-round-white-10mm", offset: int = 0, headers=None) -> Frame:
    meta = FrameMeta(unit, "line-1", "cam-1", product, 1_000, "image/png", "LOT-7")
    return Frame(unit.encode(), image, headers if headers is not None else meta.to_headers(), "frames", 0, offset, 2_000)


def by_topic(out, topic):
    return [o for o in out if o.topic == topic]


async def test_every_frame_gets_exactly_one_result_and_rejects_are_commanded() -> None:
    settings = Settings()
    k = settings.kafka
    scorer = ScriptedScorer()
    frames = [
        frame("good", PNG + b"score=0.1", offset=0),
        frame("bad", PNG + b"score=0.9", offset=1),
        frame("corrupt", PNG + b"corrupt", offset=2),
        frame("alien", PNG + b"score=0.1", product="unknown-sku", offset=3),
        frame("garbage", b"not an image", offset=4),
        frame("nometa", PNG + b"score=0.1", offset=5, headers=[("ls-unit-id", b"nometa")]),
    ]
    out = await InspectionProcessor(settings, scorer, worker="w1").process(frames)

    results = {json.loads(o.value)["unit_id"]: json.loads(o.value) for o in by_topic(out, k.topic_results)}
    assert len(by_topic(out, k.topic_results)) == len(frames) == len(results)
    assert results["good"]["verdict"] == "pass" and results["good"]["defect"] == "none"
    assert results["bad"]["verdict"] == "reject"
    assert results["bad"]["defect"] == "chip" and results["bad"]["cause"] == "model"
    assert results["bad"]["model_name"] == "tablet_classifier" and results["bad"]["model_version"] == "3"
    for unit in ("corrupt", "alien", "garbage", "nometa"):
        assert results[unit]["verdict"] == "reject", unit
        assert results[unit]["cause"] == "failsafe" and results[unit]["inspected"] is False
    # Identity the frame carries survives a failed validation (lot reports count these units).
    assert results["alien"]["lot"] == results["garbage"]["lot"] == "LOT-7"
    assert results["garbage"]["line"] == "line-1" and results["nometa"]["lot"] == ""

    rejected = sorted(json.loads(o.value)["unit_id"] for o in by_topic(out, k.topic_rejects))
    assert rejected == sorted(["bad", "corrupt", "alien", "garbage", "nometa"])

    reasons = {o.key.decode(): header_value(o.headers, H_DLQ_REASON) for o in by_topic(out, k.topic_deadletter)}
    assert reasons["corrupt"].startswith("triton: cannot identify")
    assert reasons["alien"] == "unknown product 'unknown-sku' (no model 'unknown_sku_inspector')"
    assert reasons["garbage"] == "frame is neither PNG nor JPEG"
    assert "missing metadata" in reasons["nometa"]
    # The corrupt frame travelled to the scorer with the good ones: only valid frames are scored.
    assert scorer.calls == [3]


async def test_unreachable_inference_fails_safe_for_the_whole_batch() -> None:
    settings = Settings()
    frames = [frame(f"u{i}", PNG + b"score=0.1", offset=i) for i in range(4)]
    out = await InspectionProcessor(settings, ScriptedScorer(fail_model=True), worker="w").process(frames)
    results = [json.loads(o.value) for o in by_topic(out, settings.kafka.topic_results)]
    assert [r["verdict"] for r in results] == ["reject"] * 4
    assert all("inference unavailable" in r["error"] for r in results)
    assert len(by_topic(out, settings.kafka.topic_deadletter)) == 4


@pytest.mark.parametrize(
    "score, review, reject, verdict",
    [
        (0.5, 0.5, 0.5, "pass"),  # SCORE > reject rejects: the threshold itself passes
        (0.5001, 0.5, 0.5, "reject"),  # no grey zone when review == reject
        (0.3, 0.3, 0.7, "pass"),
        (0.30001, 0.3, 0.7, "review"),
        (0.7, 0.3, 0.7, "review"),
        (0.70001, 0.3, 0.7, "reject"),
    ],
)
def test_verdict_rule(score: float, review: float, reject: float, verdict: str) -> None:
    assert verdict_for(score, review, reject) == verdict


@pytest.mark.parametrize("score, verdict", [(0.5, "pass"), (0.5001, "reject")])
async def test_threshold_is_the_judging_versions_own(score: float, verdict: str) -> None:
    settings = Settings()
    out = await InspectionProcessor(settings, ScriptedScorer(), worker="w").process(
        [frame("u", PNG + f"score={score}".encode())]
    )
    result = json.loads(by_topic(out, settings.kafka.topic_results)[0].value)
    assert result["verdict"] == verdict
    assert result["threshold"] == result["review_threshold"] == 0.5 and result["model_version"] == "3"


async def test_review_units_are_recorded_and_sent_to_the_gate() -> None:
    """Grey zone: the unit is removed by the gate (reject command with verdict review) for a person."""
    settings = Settings()
    k = settings.kafka
    frames = [
        frame("grey", PNG + b"v4 score=0.5", offset=0),
        frame("low", PNG + b"v4 score=0.2", offset=1),
        frame("high", PNG + b"v4 score=0.9", offset=2),
        frame("old", PNG + b"score=0.6", offset=3),  # same batch, another version: its own thresholds
    ]
    out = await InspectionProcessor(settings, ScriptedScorer(), worker="w").process(frames)
    results = {json.loads(o.value)["unit_id"]: json.loads(o.value) for o in by_topic(out, k.topic_results)}
    assert {u: r["verdict"] for u, r in results.items()} == {
        "grey": "review", "low": "pass", "high": "reject", "old": "reject"
    }
    assert results["grey"]["model_version"] == "4" and results["old"]["model_version"] == "3"
    assert (results["grey"]["review_threshold"], results["grey"]["threshold"]) == (0.3, 0.7)
    assert results["grey"]["defect"] == "chip" and results["grey"]["cause"] == "model"
    commands = {c.unit_id: c for c in (RejectCommand.from_json(o.value) for o in by_topic(out, k.topic_rejects))}
    assert sorted(commands) == ["grey", "high", "old"]
    assert commands["grey"].verdict == "review" and "review zone" in commands["grey"].reason
    assert commands["high"].verdict == "reject" and "tablet_classifier v4" in commands["high"].reason
    assert not by_topic(out, k.topic_deadletter)


async def test_unconfigured_products_route_to_their_slug_models() -> None:
    settings = Settings()
    k = settings.kafka
    assert ensemble_for("tablet-oval-yellow-14mm", {}) == "tablet_oval_yellow_14mm_inspector"
    assert ensemble_for("tablet-round-white-10mm", settings.stream.product_models) == "tablet_inspector"
    scorer = ScriptedScorer(known=("tablet_inspector", "tablet_oval_yellow_14mm_inspector"))
    frames = [
        frame("oval", PNG + b"score=0.9", product="Tablet-Oval-Yellow 14mm", offset=0),
        frame("nomodel", PNG + b"score=0.1", product="capsule-red", offset=1),
    ]
    out = await InspectionProcessor(settings, scorer, worker="w").process(frames)
    results = {json.loads(o.value)["unit_id"]: json.loads(o.value) for o in by_topic(out, k.topic_results)}
    assert results["oval"]["verdict"] == "reject" and results["oval"]["cause"] == "model"
    assert results["nomodel"]["cause"] == "failsafe"
    reasons = {o.key.decode(): header_value(o.headers, H_DLQ_REASON) for o in by_topic(out, k.topic_deadletter)}
    assert reasons == {"nomodel": "unknown product 'capsule-red' (no model 'capsule_red_inspector')"}
    assert "tablet_oval_yellow_14mm_inspector" in scorer.models


def test_classes_parameter_parses_per_version() -> None:
    assert parse_classes('{"1":["good","crack"],"2":["good","anomaly"]}') == {
        1: ("good", "crack"), 2: ("good", "anomaly")
    }
    assert parse_classes("good,crack") == {} and parse_classes(None) == {}


async def test_removed_units_leave_a_small_jpeg_for_the_batch_record() -> None:
    import io

    from pipeline.imaging.tablets import render_tablet
    from pipeline.wire.messages import H_DEFECT, H_LOT, H_UNIT, H_VERDICT

    settings = Settings()
    k = settings.kafka
    png = encode_png(render_tablet(np.random.default_rng(1), "tablet-round-white-10mm", "crack", size=320))
    frames = [  # a real frame, scored by what follows its PNG bytes (the decoder stops at IEND)
        frame("kept", png + b"score=0.1", offset=0),
        frame("removed", png + b"score=0.9", offset=1),
        frame("alien", png + b"score=0.1", product="unknown-sku", offset=2),
        frame("garbage", b"not an image", offset=3),
        frame("doubtful", png + b"v4 score=0.5", offset=4),  # version 4's grey zone: review
    ]
    out = await InspectionProcessor(settings, ScriptedScorer(), worker="w1").process(frames)

    images = {o.key.decode(): o for o in by_topic(out, k.topic_reject_images)}
    assert sorted(images) == ["alien", "doubtful", "removed"]  # passed units and undecodable frames: none
    with Image.open(io.BytesIO(images["doubtful"].value)) as img:  # a person decides on it: kept as taken
        assert img.format == "JPEG" and img.size == (320, 320)
    assert header_value(images["doubtful"].headers, H_VERDICT) == "review"
    removed = images["removed"]
    with Image.open(io.BytesIO(removed.value)) as img:
        assert img.format == "JPEG" and max(img.size) == settings.stream.reject_image_px
    assert header_value(removed.headers, H_UNIT) == "removed" and header_value(removed.headers, H_LOT) == "LOT-7"
    assert header_value(removed.headers, H_VERDICT) == "reject" and header_value(removed.headers, H_DEFECT) == "chip"
    assert header_value(images["alien"].headers, H_DEFECT) == "uninspected"

    off = settings.model_copy(update={"stream": settings.stream.model_copy(update={"reject_image_px": 0})})
    out = await InspectionProcessor(off, ScriptedScorer(), worker="w1").process(frames[:2])
    assert not by_topic(out, k.topic_reject_images)


async def test_a_verdict_that_breaks_the_result_contract_fails_safe() -> None:
    """A class probability the contract refuses (NaN) never crashes the batch: the unit is
    fail-safe rejected and its frame dead-lettered with the reason; the rest are decided."""
    settings = Settings()
    out = await InspectionProcessor(settings, ScriptedScorer(), worker="w").process(
        [frame("u-nan", PNG + b"score=0.1 nan-class"), frame("u-ok", PNG + b"score=0.1", offset=1)])
    results = {json.loads(o.value)["unit_id"]: json.loads(o.value) for o in out if o.topic == settings.kafka.topic_results}
    assert results["u-ok"]["verdict"] == "pass"
    bad = results["u-nan"]
    assert (bad["verdict"], bad["cause"], bad["inspected"]) == ("reject", "failsafe", False)
    assert bad["error"].startswith("verdict breaks the result contract")
    dead = [o for o in out if o.topic == settings.kafka.topic_deadletter]
    assert [o.key for o in dead] == [b"u-nan"]
    assert "result contract" in header_value(dead[0].headers, H_DLQ_REASON)
    assert [RejectCommand.from_json(o.value).unit_id for o in out if o.topic == settings.kafka.topic_rejects] == ["u-nan"]
