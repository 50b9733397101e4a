"""Blister packs: renderer ground truth, per-pocket measurement and judgement, bad input, and the
Triton model's request logic (without Triton; the served model is in test_blisters_triton.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from pipeline.imaging.blisters import (
    BLISTER_DEFECTS,
    BLISTER_PRODUCTS,
    get_blister_spec,
    render_blister,
    sample_blister,
)
from pipeline.inspections.base import Measurement
from pipeline.inspections.blister import BlisterParams, judge_blister, measure_blister
from pipeline.wire.codec import decode_rgb, encode_jpeg, encode_png

PRODUCT = "blister-2x5-round-white"
MODEL_PY = Path(__file__).resolve().parents[2] / "triton_models" / "blister_inspector" / "1" / "model.py"


def render(seed: int, pockets: list[str | None], subtle: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    img, truth = render_blister(np.random.default_rng(seed), PRODUCT, pockets, subtle)
    return np.asarray(img), truth


def pack(bad: dict[int, str]) -> list[str | None]:
    pockets: list[str | None] = [None] * 10
    for i, defect in bad.items():
        pockets[i] = defect
    return pockets


# --------------------------------------------------------------------------- renderer


def test_render_is_deterministic_modest_and_labelled() -> None:
    a, truth = render(3, pack({2: "empty-pocket"}))
    b, truth_b = render(3, pack({2: "empty-pocket"}))
    assert np.array_equal(a, b) and truth == truth_b
    assert not np.array_equal(a, render(4, pack({2: "empty-pocket"}))[0])
    assert a.dtype == np.uint8 and a.shape[2] == 3 and max(a.shape[:2]) <= 320
    assert truth["pockets"] == pack({2: "empty-pocket"}) and truth["looks"][2] == "empty"
    assert len(truth["pocket_centres"]) == 10 and truth["tablet_area_frac"][2] == 0.0
    assert all(0.45 < f < 0.65 for i, f in enumerate(truth["tablet_area_frac"]) if i != 2)
    # Row-major from the top-left: pocket 1 right of pocket 0, pocket 5 below pocket 0.
    c = np.array(truth["pocket_centres"])
    assert c[1, 0] > c[0, 0] + 40 and c[5, 1] > c[0, 1] + 40 and c[9, 0] > c[5, 0] + 150


def test_render_refuses_bad_requests() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="has 10 pockets, got 9"):
        render_blister(rng, PRODUCT, [None] * 9)
    with pytest.raises(ValueError, match="pocket 4: unknown defect 'crack'"):
        render_blister(rng, PRODUCT, pack({4: "crack"}))
    with pytest.raises(ValueError, match="unknown blister product 'nope'"):
        render_blister(rng, "nope", [None] * 10)
    with pytest.raises(ValueError, match="defect_rate"):
        sample_blister(rng, PRODUCT, 1.5)
    with pytest.raises(ValueError, match="subtle_fraction"):
        sample_blister(rng, PRODUCT, 0.5, subtle_fraction=-0.1)


def test_sample_blister_draws_the_line_mix() -> None:
    rng = np.random.default_rng(5)
    _, defect, truth = sample_blister(rng, PRODUCT, 0.0)
    assert defect is None and truth["pockets"] == [None] * 10
    for _ in range(6):
        _, defect, truth = sample_blister(rng, PRODUCT, 1.0)
        bad = [p for p in truth["pockets"] if p is not None]
        assert 1 <= len(bad) <= 2 and set(bad) <= set(BLISTER_DEFECTS)
        assert defect == bad[0]  # the first bad pocket's class
    assert get_blister_spec(PRODUCT) is BLISTER_PRODUCTS[PRODUCT]


# --------------------------------------------------------------------------- measurement


def test_good_pack_measured_against_ground_truth() -> None:
    params = BlisterParams()
    for seed in (1, 2, 3):
        rgb, truth = render(seed, [None] * 10)
        m = measure_blister(rgb, params)
        assert m.values["pockets_found"] == 10
        assert abs(float(m.values["pack_angle_deg"]) - truth["pack_angle_deg"]) < 0.5
        assert [p["index"] for p in m.parts] == list(range(10))
        for part, centre, area in zip(m.parts, truth["pocket_centres"], truth["tablet_area_frac"], strict=True):
            assert np.hypot(float(part["cx"]) - centre[0], float(part["cy"]) - centre[1]) < 1.5
            assert abs(float(part["tablet_area_frac"]) - area) < 0.03
            assert float(part["colour_distance"]) < params.colour_tolerance
        j = judge_blister(m, params)
        assert j.verdict == "pass" and j.defect == "none" and not j.reasons
        assert j.measurements == {"pockets_found": 10, "pockets_ok": 10, "pockets_bad": 0,
                                  "pack_angle_deg": m.values["pack_angle_deg"]}
        assert [(v.index, v.verdict, v.defect) for v in j.parts] == [(i, "pass", "none") for i in range(10)]


@pytest.mark.parametrize("subtle", [False, True], ids=["obvious", "subtle"])
@pytest.mark.parametrize("defect", BLISTER_DEFECTS)
def test_each_defect_is_found_at_its_pocket(defect: str, subtle: bool) -> None:
    params = BlisterParams()
    for seed, where in ((10, (3, 6)), (11, (0, 9)), (12, (4, 5))):
        rgb, truth = render(seed, pack(dict.fromkeys(where, defect)), subtle)
        j = judge_blister(measure_blister(rgb, params), params)
        got = {v.index: v.defect for v in j.parts if v.verdict != "pass"}
        assert got == dict.fromkeys(where, defect), (truth["looks"], j.reasons)
        assert j.verdict == "reject" and j.defect == defect
        assert j.measurements["pockets_bad"] == 2 and j.measurements["pockets_ok"] == 8
        assert all(r.startswith(f"pocket {i}: ") for r, i in zip(j.reasons, sorted(where), strict=True))


def test_broken_tablet_area_follows_the_missing_piece() -> None:
    rgb, truth = render(20, pack({1: "broken-tablet", 7: "broken-tablet"}), subtle=False)
    m = measure_blister(rgb, BlisterParams())
    assert {truth["looks"][1], truth["looks"][7]} <= {"half-missing", "big-bite"}
    for i in (1, 7):
        assert abs(float(m.parts[i]["tablet_area_frac"]) - truth["tablet_area_frac"][i]) < 0.03
        assert float(m.parts[i]["tablet_area_frac"]) < 0.5 and float(m.parts[i]["solidity"]) < 0.97


def test_measurement_survives_jpeg_and_json() -> None:
    img, truth = render_blister(np.random.default_rng(8), PRODUCT, pack({2: "foreign-tablet"}))
    params = BlisterParams()
    m = measure_blister(decode_rgb(encode_jpeg(img, 90)), params)
    back = Measurement.from_json(m.to_json())
    assert back == m
    j = judge_blister(back, params)
    assert [v.index for v in j.parts if v.verdict == "reject"] == [2] and j.defect == "foreign-tablet"


# --------------------------------------------------------------------------- judgement logic


def _part(index: int, **kw: float) -> dict[str, float | int]:
    base: dict[str, float | int] = {
        "index": index, "tablet_area_frac": 0.55, "colour_distance": 3.0, "colour_r": 228, "colour_g": 230,
        "colour_b": 226, "solidity": 0.97, "roundness": 0.95, "diameter_ratio": 1.0,
    }
    return base | kw


@pytest.mark.parametrize(
    ("changes", "defect", "reason"),
    [
        ({"tablet_area_frac": 0.02}, "empty-pocket", "tablet area 0.020"),
        ({"colour_distance": 40.0}, "foreign-tablet", "is 40.0 from"),
        ({"solidity": 0.85}, "broken-tablet", "solidity 0.850"),
        ({"diameter_ratio": 1.15, "roundness": 0.6}, "foreign-tablet", "longest dimension 1.15"),
        ({"diameter_ratio": 0.8, "tablet_area_frac": 0.35}, "foreign-tablet", "longest dimension 0.80"),
        ({"tablet_area_frac": 0.3, "roundness": 0.5}, "broken-tablet", "tablet area 0.300"),
        ({"roundness": 0.8}, "broken-tablet", "roundness 0.800"),
    ],
)
def test_judge_classifies_each_failing_check(changes: dict[str, float], defect: str, reason: str) -> None:
    params = BlisterParams()
    parts = [_part(i) for i in range(10)]
    parts[6] = _part(6, **changes)
    parts[8] = _part(8, tablet_area_frac=0.0)  # a later empty pocket: the pack's defect stays pocket 6's
    j = judge_blister(Measurement(values={"pockets_found": 10}, parts=parts), params)
    assert j.verdict == "reject" and j.defect == defect
    assert [(v.index, v.defect) for v in j.parts if v.verdict == "reject"] == [(6, defect), (8, "empty-pocket")]
    assert reason in j.parts[6].reason and j.reasons[0].startswith("pocket 6: ")
    assert j.measurements["pockets_ok"] == 8 and j.measurements["pockets_bad"] == 2


def test_judge_refuses_a_measurement_of_another_format() -> None:
    with pytest.raises(ValueError, match="has 4 pockets but the recipe's grid is 2x5"):
        judge_blister(Measurement(parts=[_part(i) for i in range(4)]), BlisterParams())
    parts = [_part(i) for i in range(10)]
    del parts[3]["solidity"]
    with pytest.raises(ValueError, match="pocket record 3 lacks solidity"):
        judge_blister(Measurement(parts=parts), BlisterParams())


# --------------------------------------------------------------------------- bad input


def test_frames_without_a_pack_or_grid_are_refused_with_the_reason() -> None:
    params = BlisterParams()
    with pytest.raises(ValueError, match="no blister pack found"):
        measure_blister(np.full((176, 320, 3), 40, dtype=np.uint8), params)
    rgb, _ = render(30, [None] * 10)
    with pytest.raises(ValueError, match="pocket grid 2x6 .* needs"):
        measure_blister(rgb, params.model_copy(update={"cols": 6}))
    with pytest.raises(ValueError, match="pocket grid not found"):
        measure_blister(rgb, params.model_copy(update={"pocket_pitch_px": 50.0, "pocket_diameter_px": 40.0}))
    with pytest.raises(ValueError, match="cut off by the frame edge"):
        measure_blister(np.ascontiguousarray(rgb[:, 40:]), params)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        measure_blister(rgb.astype(np.float32), params)
    with pytest.raises(ValueError, match="not a decodable PNG/JPEG image"):
        decode_rgb(b"\x89PNG not really")
    with pytest.raises(ValueError, match="empty"):
        decode_rgb(b"")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rows": 0}, "rows"),
        ({"cols": -1}, "cols"),
        ({"min_tablet_area_frac": 1.2}, "min_tablet_area_frac"),
        ({"empty_max_area_frac": 0.0}, "empty_max_area_frac"),
        ({"empty_max_area_frac": 0.5}, "must be below min_tablet_area_frac"),
        ({"pocket_diameter_px": 60.0}, "pockets cannot overlap"),
        ({"tablet_diameter_px": 50.0}, "must be smaller than pocket_diameter_px"),
        ({"tablet_colour": [300, 0, 0]}, "tablet_colour"),
        ({"colour_tolerance": 0}, "colour_tolerance"),
        ({"rowz": 2}, "rowz"),
    ],
)
def test_params_refuse_impossible_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BlisterParams.model_validate(BlisterParams().model_dump() | changes)


# --------------------------------------------------------------------------- Triton request logic


def _model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("blister_inspector_model", MODEL_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_request_logic() -> None:
    model = _model()
    params = BlisterParams().model_dump_json().encode()
    frames = []
    for seed, bad in ((40, {}), (41, {5: "broken-tablet"})):
        img, _ = render_blister(np.random.default_rng(seed), PRODUCT, pack(bad))
        frames.append(encode_png(img))
    out = model.measure_request(np.array(frames, dtype=object).reshape(2, 1), np.array([params] * 2, dtype=object))
    assert out.shape == (2, 1)
    docs = [json.loads(item) for item in out[:, 0]]
    assert [len(d["parts"]) for d in docs] == [10, 10] and docs[0]["values"]["pockets_found"] == 10
    j = judge_blister(Measurement.from_json(out[1, 0]), BlisterParams())
    assert j.defect == "broken-tablet" and [v.index for v in j.parts if v.verdict == "reject"] == [5]

    blank = encode_png(Image.new("RGB", (320, 176), (30, 30, 35)))
    bad = np.array([frames[0], b"garbage", blank], dtype=object).reshape(3, 1)
    with pytest.raises(ValueError) as exc:
        model.measure_request(bad, np.array([params] * 3, dtype=object).reshape(3, 1))
    text = str(exc.value)
    assert "2 of 3" in text and "item 1: not a decodable PNG/JPEG image" in text and "item 2: no blister pack" in text
    with pytest.raises(ValueError, match=r"item 0: invalid PARAMS: rows: Input should be greater than or equal to 1"):
        model.measure_request(np.array([[frames[0]]], dtype=object), np.array([[b'{"rows": 0}']], dtype=object))
    with pytest.raises(ValueError, match="invalid PARAMS"):
        model.measure_request(np.array([[frames[0]]], dtype=object), np.array([[b"{not json"]], dtype=object))
    with pytest.raises(ValueError, match="PARAMS has 1 item"):
        model.measure_request(np.array([[frames[0]], [frames[1]]], dtype=object), np.array([[params]], dtype=object))
