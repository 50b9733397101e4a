"""The input-space check: a reference from a version's training images, in/out decisions, and
the worker's use of it (pass -> review with the reason; reject stays reject)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.imaging.tablets import render_tablet
from pipeline.model import repository as layout
from pipeline.model.input_space import (
    DESCRIPTORS,
    METHOD,
    MIN_CONTRAST,
    Reference,
    _otsu,
    _percentile,
    _rgb,
    check,
    describe,
    parse_param,
    reference,
)
from pipeline.model.preprocess import prepare_pil
from pipeline.settings import Settings
from pipeline.wire.codec import encode_png
from pipeline.wire.messages import FrameMeta
from streams.processor import INPUT_SPACE_DEFECT, Frame, InspectionProcessor
from streams.triton_client import ModelInfo, Scored, ScoreOutcome

ROUND, OVAL = "tablet-round-white-10mm", "tablet-oval-yellow-14mm"


def _frames(product: str, n: int, stream: int) -> list[Image.Image]:
    return [render_tablet(np.random.default_rng([7, stream, i]), product,
                          ("chip", "discoloration", None)[i % 3] if i % 2 else None) for i in range(n)]


@pytest.fixture(scope="module")
def ref() -> Reference:
    return reference([prepare_pil(im) for im in _frames(ROUND, 80, 0)], 160)


def test_reference_records_every_descriptor_with_a_margin(ref: Reference) -> None:
    assert set(ref.ranges) == set(DESCRIPTORS) and ref.input_hw == (160, 160) and ref.n_images == 80
    assert ref.observed is not None
    for name, (lo, hi) in ref.ranges.items():
        assert lo < ref.observed[name][0] <= ref.observed[name][1] < hi, name
    again = Reference.from_dict(json.loads(json.dumps(ref.as_dict())))
    flat = lambda r: [v for k in DESCRIPTORS for v in r.ranges[k]]  # noqa: E731
    assert flat(again) == pytest.approx(flat(ref), rel=1e-5) and again.method == METHOD


def test_new_units_of_the_product_are_in_and_the_oval_tablet_is_out(ref: Reference) -> None:
    fresh = [check(ref, describe(prepare_pil(im)), "tablet_classifier v9") for im in _frames(ROUND, 40, 5)]
    assert [f.status for f in fresh] == ["in"] * 40
    ovals = [check(ref, describe(prepare_pil(im)), "tablet_classifier v9") for im in _frames(OVAL, 10, 5)]
    assert all(f.doubtful for f in ovals)
    assert all(any(r.startswith("input space: elongation ") and "tablet_classifier v9's training images" in r
                   for r in f.reasons) for f in ovals)


def test_blurred_and_shifted_frames_are_out(ref: Reference) -> None:
    im = _frames(ROUND, 1, 6)[0]
    blurred = check(ref, describe(prepare_pil(im.filter(ImageFilter.GaussianBlur(3)))), "v")
    assert blurred.doubtful and any("sharpness" in r for r in blurred.reasons)
    arr = np.asarray(im)
    shifted = np.pad(arr, ((0, 0), (60, 0), (0, 0)), mode="edge")[:, :160]
    out = check(ref, describe(prepare_pil(Image.fromarray(shifted))), "v")
    assert out.doubtful and any("offset" in r for r in out.reasons)


def test_no_reference_no_unit_and_another_method() -> None:
    assert check(None, {"area": 0.2}, "tablet_classifier v1").reasons == (
        "no input-space reference in tablet_classifier v1",)
    assert check(None, {"area": 0.2}, "x").status == "unchecked"
    ref = Reference({"area": (0.1, 0.3), "elongation": (0.9, 1.1)}, (160, 160), 10)
    nan = check(ref, {"area": 0.2, "elongation": math.nan}, "v")
    assert nan.doubtful and nan.reasons == ("input space: elongation not measurable (no unit found) outside "
                                            "[0.9, 1.1] of v's training images",)
    assert check(Reference(ref.ranges, (160, 160), 10, METHOD + 1), {"area": 0.2}, "v").status == "unchecked"
    blank = describe(prepare_pil(Image.new("RGB", (160, 160), (40, 40, 40))))
    assert blank["area"] == 0.0 and math.isnan(blank["elongation"])


def test_config_parameter_per_version() -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig(name="tablet_classifier")
    r = Reference({"area": (0.1, 0.3)}, (160, 160), 10)
    layout.set_input_space(config, 2, r.as_dict())
    layout.set_input_space(config, 3, r.as_dict())
    assert set(parse_param(layout.parameter(config, layout.INPUT_SPACE_PARAM))) == {2, 3}
    layout.set_input_space(config, None, None, keep={3})  # version 2 has no artifact
    assert set(layout.input_space_by_version(config)) == {3}
    assert parse_param("not json") == {} and parse_param('{"4": {"ranges": 1}}') == {}


class _Scorer:
    """Scores from the bytes after the PNG (b'score=0.9'); version 2 has a reference, 1 none."""

    def __init__(self, ref: Reference) -> None:
        self.info = ModelInfo("tablet_inspector", "tablet_classifier", {1: ("good", "chip"), 2: ("good", "chip")},
                              {2: ref})

    async def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        return self.info

    async def score(self, model: str, images: list[bytes]) -> list[ScoreOutcome]:
        out: list[ScoreOutcome] = []
        for image in images:
            s, v = float(image.split(b"score=")[1][:3]), 1 if image.endswith(b"old") else 2
            out.append(Scored(s, {"good": 1 - s, "chip": s}, 0.5, 0.8, v, "tablet_classifier",
                              self.info.input_space.get(v)))
        return out


async def test_worker_sends_doubtful_units_to_review_with_the_reason(ref: Reference) -> None:
    settings = Settings()
    round_png, oval_png = encode_png(_frames(ROUND, 1, 8)[0]), encode_png(_frames(OVAL, 1, 8)[0])
    units = {"round": round_png + b"score=0.1", "oval": oval_png + b"score=0.1",
             "oval-bad": oval_png + b"score=0.9", "oval-v1": oval_png + b"score=0.1 old"}
    frames = [Frame(u.encode(), data, FrameMeta(u, "line-1", "cam-1", ROUND, 1_000, "image/png", "LOT").to_headers(),
                    "frames", 0, i, 2_000) for i, (u, data) in enumerate(units.items())]
    out = await InspectionProcessor(settings, _Scorer(ref), worker="w").process(frames)
    results = {json.loads(o.value)["unit_id"]: json.loads(o.value)
               for o in out if o.topic == settings.kafka.topic_results}

    assert results["round"]["verdict"] == "pass" and results["round"]["measurements"]["input_space"] == "in"
    assert 0.9 < results["round"]["measurements"]["input_space.elongation"] < 1.1
    oval = results["oval"]
    assert oval["verdict"] == "review" and oval["defect"] == INPUT_SPACE_DEFECT and oval["cause"] == "model"
    assert any(r.startswith("input space: elongation") and "tablet_classifier v2" in r for r in oval["reasons"])
    assert oval["measurements"]["input_space"].startswith("input space: ")
    bad = results["oval-bad"]  # the model's reject stays a reject; the doubt is recorded beside it
    assert bad["verdict"] == "reject" and bad["defect"] == "chip"
    assert any(r.startswith("input space: elongation") for r in bad["reasons"])
    v1 = results["oval-v1"]  # a version without a reference: judged as before, and says so
    assert v1["verdict"] == "pass"
    assert v1["measurements"]["input_space"] == "no input-space reference in tablet_classifier v1"
    rejected = {json.loads(o.value)["unit_id"] for o in out if o.topic == settings.kafka.topic_rejects}
    assert rejected == {"oval", "oval-bad"}  # review units leave the line for a person


def test_session_variants_put_another_days_light_inside_and_are_seeded() -> None:
    from pipeline.datasets.shift import Shift, shift_image

    images = [prepare_pil(im) for im in _frames(ROUND, 40, 0)]
    plain, with_sessions = reference(images, 160), reference(images, 160, session_seed=3)
    assert with_sessions.n_images == 40 and reference(images, 160, session_seed=3).ranges == with_sessions.ranges
    rng = np.random.default_rng(0)
    darker = [describe(prepare_pil(shift_image(im, Shift(0.8, 1.0, 3), rng))) for im in _frames(ROUND, 20, 9)]
    assert all(check(with_sessions, d, "v").status == "in" for d in darker)
    assert any(check(plain, d, "v").doubtful for d in darker)  # what the variants are for
    oval = describe(prepare_pil(_frames(OVAL, 1, 9)[0]))
    assert check(with_sessions, oval, "v").doubtful


def test_a_clipped_unit_is_out_whatever_light_the_sessions_allow() -> None:
    images = [prepare_pil(im) for im in _frames(ROUND, 40, 0)]
    ref = reference(images, 160, session_seed=3)
    over = np.clip(np.asarray(_frames(ROUND, 1, 11)[0], dtype=np.float32) * 3, 0, 255).astype(np.uint8)
    finding = check(ref, describe(prepare_pil(Image.fromarray(over))), "v")
    assert finding.doubtful and any(r.startswith("input space: clipped ") for r in finding.reasons)


def test_percentile_is_numpys_from_a_partial_sort() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 200, 50_880):
        values = rng.gamma(1.5, 4.0, size=n).astype(np.float32)
        for q in (0.0, 50.0, 99.5, 100.0):
            assert _percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-12)


def test_unit_colour_clipping_and_sharpness_are_the_plain_masked_figures() -> None:
    """describe computes them from whole-frame products, counts and a partial sort (per-frame
    cost); they must be the plain figures over the unit's own pixels, as the reference's were."""
    img = np.asarray(_frames(ROUND, 1, 9)[0], dtype=np.float32)
    x = prepare_pil(Image.fromarray(np.clip(img * 1.5, 0, 255).astype(np.uint8)))  # part of the unit clipped
    d = describe(x)
    rgb = _rgb(x)
    b = 160 // 32
    border = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                             rgb[b:-b, :b].reshape(-1, 3), rgb[b:-b, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((rgb - bg) ** 2).sum(axis=2))
    mask = dist > max(MIN_CONTRAST, _otsu(dist))
    unit = rgb[mask]
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey = rgb @ luma
    contrast = abs(float(grey[mask].mean()) - float(bg @ np.array([0.299, 0.587, 0.114])))
    step = float(np.percentile(np.concatenate([np.abs(np.diff(grey, axis=1)).ravel(),
                                               np.abs(np.diff(grey, axis=0)).ravel()]), 99.5))
    assert 0.0 < d["clipped"] == pytest.approx(float((unit.max(axis=1) >= 254.0).mean()), abs=1e-12)
    for i, name in enumerate(("red", "green", "blue")):
        assert d[name] == pytest.approx(float(unit[:, i].mean()), rel=1e-5)
    assert d["sharpness"] == pytest.approx(step / max(contrast, 1.0), rel=1e-5)
