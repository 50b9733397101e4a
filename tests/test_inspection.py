"""Decision logic of the worker, with a scripted scorer standing in for Triton."""

from __future__ import annotations

import json

import pytest

from pipeline.inference import Failed, ModelInfo, Outcome, Scored
from pipeline.inspection import Frame, InspectionProcessor
from pipeline.messages import H_DLQ_REASON, FrameMeta, header_value
from pipeline.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 32
INFO = ModelInfo("tablet_inspector", "tablet_classifier", "3", ("good", "crack", "chip"), 0.5)


class ScriptedScorer:
    """Returns the score written after the PNG signature (b'...score=0.9')."""

    def __init__(self, fail_model: bool = False) -> None:
        self.calls: list[int] = []
        self.fail_model = fail_model

    async def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        if self.fail_model:
            raise ConnectionError("triton down")
        return INFO

    async def score(self, model: str, images: list[bytes]) -> list[Outcome]:
        self.calls.append(len(images))
        out: list[Outcome] = []
        for image in images:
            if b"corrupt" in image:
                out.append(Failed("triton: cannot identify image file"))
            else:
                s = float(image.split(b"score=")[1])
                out.append(Scored(s, {"good": 1 - s, "crack": s * 0.3, "chip": s * 0.7}))
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
    assert reasons["alien"] == "unknown product 'unknown-sku'"
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


@pytest.mark.parametrize("score, verdict", [(0.4999, "pass"), (0.5, "reject")])
async def test_threshold_is_inclusive(score: float, verdict: str) -> None:
    settings = Settings()
    out = await InspectionProcessor(settings, ScriptedScorer(), worker="w").process(
        [frame("u", PNG + f"score={score}".encode())]
    )
    assert json.loads(by_topic(out, settings.kafka.topic_results)[0].value)["verdict"] == verdict
