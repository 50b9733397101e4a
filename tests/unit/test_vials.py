"""Vials: renderer truth, measurement against it, the recipe's judgement, bad input, Triton logic."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2 as mc

from pipeline.imaging.vials import (
    VIAL_DEFECTS,
    VIAL_PRODUCTS,
    draw_vial_defect,
    render_vial,
    sample_vial,
)
from pipeline.inspections.base import Measurement
from pipeline.inspections.vial import VialParams, default_params, judge_vial, measure_vial
from pipeline.wire.codec import decode_rgb, encode_jpeg, encode_png

MODEL_DIR = Path(__file__).resolve().parents[2] / "triton_models" / "vial_inspector"
VIAL = "vial-2r-clear-5ml"
YELLOW = "vial-4r-yellow-3ml"
FILL_ERROR_MM = 0.15  # well under the 1.0 mm tolerance


def _measure(product: str, defect: str | None, seed: int, subtle: bool = False):  # type: ignore[no-untyped-def]
    img, truth = render_vial(np.random.default_rng(seed), product, defect, subtle)
    params = default_params(VIAL_PRODUCTS[product])
    m = measure_vial(np.asarray(img), params)
    return img, truth, m, judge_vial(m, params)


# --------------------------------------------------------------------------- renderer


def test_products_classes_and_frame() -> None:
    assert VIAL_DEFECTS == ("low-fill", "high-fill", "missing-stopper", "missing-cap", "particles")
    spec = VIAL_PRODUCTS[VIAL]
    assert 3.8 <= spec.fill_ml(spec.nominal_fill_mm) <= 4.2  # a 2R-like vial holding ~4 ml
    img, truth = render_vial(np.random.default_rng(0), VIAL, None)
    assert img.mode == "RGB" and max(img.size) <= 320
    assert {"fill_mm", "stopper", "cap", "particles"} <= set(truth)
    assert truth["stopper"] and truth["cap"] and truth["particles"] == 0


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    a, ta = render_vial(np.random.default_rng(5), VIAL, "particles")
    b, tb = render_vial(np.random.default_rng(5), VIAL, "particles")
    c, _ = render_vial(np.random.default_rng(6), VIAL, "particles")
    assert np.array_equal(np.asarray(a), np.asarray(b)) and ta == tb
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_fill_truth_follows_the_defect() -> None:
    spec = VIAL_PRODUCTS[VIAL]
    nom, tol = spec.nominal_fill_mm, spec.fill_tolerance_mm
    for seed in range(8):
        good = render_vial(np.random.default_rng(seed), VIAL, None)[1]["fill_mm"]
        assert abs(good - nom) <= tol - 0.3  # type: ignore[operator]
        low = render_vial(np.random.default_rng(seed), VIAL, "low-fill", subtle=True)[1]["fill_mm"]
        high = render_vial(np.random.default_rng(seed), VIAL, "high-fill", subtle=True)[1]["fill_mm"]
        assert nom - tol - 0.6 <= low <= nom - tol - 0.3  # type: ignore[operator]  # just outside
        assert nom + tol + 0.3 <= high <= nom + tol + 0.6  # type: ignore[operator]


def test_sample_draws_classes_uniformly() -> None:
    rng = np.random.default_rng(3)
    draws = [draw_vial_defect(rng, 0.5)[0] for _ in range(2000)]
    assert 0.45 < draws.count(None) / len(draws) < 0.55
    counts = [draws.count(d) for d in VIAL_DEFECTS]
    assert min(counts) > 150  # ~200 each
    img, defect, truth = sample_vial(np.random.default_rng(1), VIAL, 1.0)
    assert defect in VIAL_DEFECTS and truth["defect"] == defect and img.size == VIAL_PRODUCTS[VIAL].frame_px
    assert sample_vial(np.random.default_rng(1), VIAL, 0.0)[1] is None


def test_renderer_refuses_unknown_inputs() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown vial product"):
        render_vial(rng, "vial-nope", None)
    with pytest.raises(ValueError, match="unknown vial defect"):
        render_vial(rng, VIAL, "crack")
    with pytest.raises(ValueError, match="defect_rate"):
        draw_vial_defect(rng, 1.5)


# --------------------------------------------------------------------------- measurement + judge


@pytest.mark.parametrize("product", [VIAL, YELLOW])
def test_good_vials_measure_close_to_truth_and_pass(product: str) -> None:
    for seed in range(5):
        _, truth, m, j = _measure(product, None, seed)
        assert abs(m.values["fill_mm"] - truth["fill_mm"]) < FILL_ERROR_MM  # type: ignore[operator]
        assert abs(m.values["tilt_deg"] - truth["tilt_deg"]) < 0.2  # type: ignore[operator]
        assert m.values["stopper_present"] is True and m.values["cap_present"] is True
        assert m.values["particles"] == 0
        assert j.verdict == "pass" and j.defect == "none" and j.reasons == []
        assert j.measurements["fill_mm"] == m.values["fill_mm"]
        assert abs(j.measurements["fill_pct"] - 100.0 * truth["fill_mm"] / VIAL_PRODUCTS[product].nominal_fill_mm) < 1.0  # type: ignore[operator]


@pytest.mark.parametrize("product", [VIAL, YELLOW])
@pytest.mark.parametrize("defect", VIAL_DEFECTS)
@pytest.mark.parametrize("subtle", [False, True])
def test_every_defect_is_detected(product: str, defect: str, subtle: bool) -> None:
    _, truth, m, j = _measure(product, defect, 11, subtle)
    assert j.verdict == "reject" and j.defect == defect, j.reasons
    assert abs(m.values["fill_mm"] - truth["fill_mm"]) < FILL_ERROR_MM  # type: ignore[operator]
    assert m.values["stopper_present"] is truth["stopper"] and m.values["cap_present"] is truth["cap"]
    assert m.values["particles"] == truth["particles"]
    assert "fill_mm" in j.measurements and "fill_pct" in j.measurements


def test_fill_reasons_name_value_and_tolerance() -> None:
    _, truth, m, j = _measure(VIAL, "low-fill", 2, subtle=True)
    assert j.defect == "low-fill" and len(j.reasons) == 1
    assert f"{m.values['fill_mm']:.2f} mm" in j.reasons[0] and "nominal 26.00 mm" in j.reasons[0]
    assert "tolerance 1.00 mm" in j.reasons[0]
    _, _, m, j = _measure(VIAL, "high-fill", 2)
    assert j.defect == "high-fill" and "above nominal" in j.reasons[0]


def test_jpeg_frames_measure_as_well() -> None:
    img, truth = render_vial(np.random.default_rng(4), VIAL, None)
    m = measure_vial(decode_rgb(encode_jpeg(img, 90)), default_params(VIAL_PRODUCTS[VIAL]))
    assert abs(m.values["fill_mm"] - truth["fill_mm"]) < FILL_ERROR_MM  # type: ignore[operator]


def test_recipe_switches_and_limits() -> None:
    spec = VIAL_PRODUCTS[VIAL]
    base = default_params(spec)
    _, _, m, _ = _measure(VIAL, "missing-cap", 3)
    assert judge_vial(m, base.model_copy(update={"require_cap": False})).verdict == "pass"
    _, _, m, _ = _measure(VIAL, "particles", 3)
    assert judge_vial(m, base.model_copy(update={"max_particles": 5})).verdict == "pass"
    # A tighter tolerance turns a good fill into a reject; the numbers are the same measurement.
    _, _, m, _ = _measure(VIAL, None, 3)
    tight = base.model_copy(update={"fill_tolerance_mm": 0.01})
    assert judge_vial(m, tight).defect in ("low-fill", "high-fill")


def test_judge_order_and_all_reasons() -> None:
    params = default_params(VIAL_PRODUCTS[VIAL])
    m = Measurement(
        values={"fill_mm": 20.0, "fill_pct": 76.9, "stopper_present": False, "cap_present": False, "particles": 2}
    )
    j = judge_vial(m, params)
    assert j.verdict == "reject" and j.defect == "missing-cap"
    assert [r.split()[0] for r in j.reasons] == ["no", "no", "fill", "2"]
    assert j.measurements == {
        "fill_mm": 20.0, "fill_pct": 76.9, "fill_dev_mm": -6.0, "stopper_present": False, "cap_present": False,
        "particles": 2,
    }
    empty = judge_vial(Measurement(values={**m.values, "fill_mm": 0.0, "meniscus_found": False}), params)
    assert empty.defect == "missing-cap" and "no liquid level found" in empty.reasons[2]
    with pytest.raises(ValueError, match="'fill_mm'"):
        judge_vial(Measurement(values={"stopper_present": True}), params)
    with pytest.raises(ValueError, match="'cap_present'"):
        judge_vial(Measurement(values={**m.values, "cap_present": "yes"}), params)


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"fill_tolerance_mm": 26.0}, "must be below nominal_fill_mm"),
        ({"fill_tolerance_mm": 0.0}, "greater than 0"),
        ({"mm_per_px": -0.1}, "greater than 0"),
        ({"mm_per_px": float("inf")}, "finite number"),
        ({"bottom_mm": 30.0}, "bottom_mm"),
        ({"max_particles": -1}, "greater than or equal to 0"),
        ({"fill_tolerence_mm": 1.0}, "Extra inputs are not permitted"),
    ],
)
def test_params_refuse_impossible_values(update: dict[str, float], reason: str) -> None:
    doc = default_params(VIAL_PRODUCTS[VIAL]).model_dump() | update
    with pytest.raises(ValidationError, match=reason):
        VialParams(**doc)


def test_frames_without_a_vial_are_refused() -> None:
    params = default_params(VIAL_PRODUCTS[VIAL])
    white = np.full((320, 176, 3), 230, np.uint8)
    with pytest.raises(ValueError, match="no vial found"):
        measure_vial(white, params)
    with pytest.raises(ValueError, match="no vial found"):
        measure_vial(np.zeros((320, 176, 3), np.uint8), params)
    belt_only = white.copy()
    belt_only[300:] = 30
    with pytest.raises(ValueError, match="no vial found: no glass walls"):
        measure_vial(belt_only, params)
    noise = np.random.default_rng(0).integers(0, 256, (320, 176, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="no vial found"):
        measure_vial(noise, params)
    # The vial only half in view (shifted up past the frame top): refused, not mis-measured.
    img = np.asarray(render_vial(np.random.default_rng(0), VIAL, None)[0])
    with pytest.raises(ValueError, match="no vial found"):
        measure_vial(np.ascontiguousarray(img[150:]), params)


def test_bad_arrays_and_bytes_are_refused_with_the_reason() -> None:
    params = default_params(VIAL_PRODUCTS[VIAL])
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        measure_vial(np.zeros((320, 176), np.uint8), params)
    with pytest.raises(ValueError, match="too small"):
        measure_vial(np.zeros((20, 20, 3), np.uint8), params)
    with pytest.raises(ValueError, match="not a decodable PNG/JPEG image"):
        decode_rgb(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ValueError, match="empty"):
        decode_rgb(b"")
    gif = io.BytesIO()
    Image.new("RGB", (60, 60)).save(gif, format="GIF")
    with pytest.raises(ValueError, match="not PNG or JPEG"):
        decode_rgb(gif.getvalue())


# --------------------------------------------------------------------------- Triton model logic


def _load_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vial_inspector_model", MODEL_DIR / "1" / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_declares_the_contract() -> None:
    cfg = text_format.Parse((MODEL_DIR / "config.pbtxt").read_text(), mc.ModelConfig())
    model = _load_model()
    assert cfg.name == "vial_inspector" and cfg.backend == "python" and cfg.max_batch_size >= 8
    assert cfg.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [
        (model.IMAGE, mc.TYPE_STRING, [1]),
        (model.PARAMS, mc.TYPE_STRING, [1]),
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [(model.RESULT, mc.TYPE_STRING, [1])]


def test_triton_request_logic() -> None:
    model = _load_model()
    spec = VIAL_PRODUCTS[VIAL]
    frames, truths = [], []
    for seed, defect in ((0, None), (1, "missing-stopper")):
        img, truth = render_vial(np.random.default_rng(seed), VIAL, defect)
        frames.append(encode_png(img))
        truths.append(truth)
    params = default_params(spec).model_dump_json().encode()
    images = np.array(frames, dtype=object).reshape(2, 1)
    out = model.measure_request(images, np.array([params, params], dtype=object).reshape(2, 1))
    assert out.shape == (2, 1) and out.dtype == object
    results = [Measurement.from_json(item) for item in out[:, 0]]
    for res, truth in zip(results, truths, strict=True):
        assert abs(res.values["fill_mm"] - truth["fill_mm"]) < FILL_ERROR_MM  # type: ignore[operator]
        assert res.values["stopper_present"] is truth["stopper"]

    bad = np.array([frames[0], b"garbage", frames[1]], dtype=object).reshape(3, 1)
    with pytest.raises(ValueError) as exc:
        model.measure_request(bad, np.array([[params]] * 3, dtype=object))
    assert "1 of 3" in str(exc.value) and "item 1: not a decodable PNG/JPEG image" in str(exc.value)
    wrong = json.dumps({**json.loads(params), "fill_tolerance_mm": 40.0, "colour": 1}).encode()
    with pytest.raises(ValueError) as exc:
        model.measure_request(images, np.array([[wrong]] * 2, dtype=object))
    assert "invalid PARAMS" in str(exc.value) and "colour: unknown key" in str(exc.value)
    with pytest.raises(ValueError, match="must be below nominal_fill_mm"):
        model.measure_request(images[:1], np.array([[json.dumps({**json.loads(params), "fill_tolerance_mm": 40.0}).encode()]], dtype=object))
    with pytest.raises(ValueError, match="invalid PARAMS"):
        model.measure_request(images[:1], np.array([[b"{not json"]], dtype=object))
    with pytest.raises(ValueError, match="item 0: PARAMS must be UTF-8 JSON bytes, got int"):
        model.measure_request(images[:1], np.array([[3]], dtype=object))
    assert np.array_equal(model.measure_request(images, np.array([[params.decode()]] * 2, dtype=object)), out)
    with pytest.raises(ValueError, match="one per frame"):  # one PARAMS item per IMAGE item, exactly
        model.measure_request(images, np.array([params] * 3, dtype=object).reshape(3, 1))
    with pytest.raises(ValueError, match="PARAMS has 1 item"):
        model.measure_request(images, np.array([[params]], dtype=object))
    with pytest.raises(ValueError, match="no vial found"):
        blank = encode_png(Image.new("RGB", (176, 320), (230, 230, 230)))
        model.measure_request(np.array([[blank]], dtype=object), np.array([[params]], dtype=object))
