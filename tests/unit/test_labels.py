"""Labels: renderer ground truth, reading against it, each defect judged with its reason, the
recipe section's validation, the serial tracker and the Triton model's per-request logic."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import zxingcpp
from PIL import Image
from pydantic import ValidationError

from pipeline.imaging.labels import (
    DAMAGES,
    LABEL_DEFECTS,
    LABEL_PRODUCTS,
    LabelContent,
    LabelTruth,
    render_label,
    sample_label,
    serial_for,
)
from pipeline.inspections.base import Measurement
from pipeline.inspections.label import (
    LabelParams,
    SerialTracker,
    judge_label,
    read_label,
    read_label_frame,
)
from pipeline.inspections.serving import parse_params
from pipeline.wire.codec import decode_rgb, encode_jpeg, encode_png

PRODUCT = "carton-label-gs1"
SPEC = LABEL_PRODUCTS[PRODUCT]
LOT = "L2611A07"
TODAY = date(2026, 11, 29)
PARAMS = LabelParams(gtin=SPEC.gtin, min_remaining_shelf_life_days=30)
MODEL_PY = Path(__file__).resolve().parents[2] / "triton_models" / "label_reader" / "1" / "model.py"


Sample = tuple[Image.Image, str | None, LabelTruth]


@pytest.fixture(scope="module")
def samples() -> dict[tuple[str, bool], list[Sample]]:
    """Labels of every (defect, subtle) pair and every damage kind, plus good ones."""
    rng = np.random.default_rng(7)
    out: dict[tuple[str, bool], list[Sample]] = {}
    damages: set[tuple[str, bool]] = set()
    seq = 1
    while (
        len(out) < 2 * len(LABEL_DEFECTS) + 1
        or len(damages) < 2 * len(DAMAGES)
        or len(out.get(("good", False), [])) < 4
    ):
        rate = 0.3 if len(out.get(("good", False), [])) < 4 else 1.0
        img, defect, truth = sample_label(rng, PRODUCT, rate, LOT, seq, TODAY)
        seq += 1
        key = (defect or "good", truth.subtle)
        if truth.damage is not None:
            if (truth.damage, truth.subtle) in damages:
                continue
            damages.add((truth.damage, truth.subtle))
        elif len(out.get(key, [])) >= 4:
            continue
        out.setdefault(key, []).append((img, defect, truth))
        assert seq < 400, "renderer never drew some defect"
    return out


# --------------------------------------------------------------------------- renderer


def test_render_is_deterministic_and_framed() -> None:
    a = sample_label(np.random.default_rng(3), PRODUCT, 0.5, LOT, 5, TODAY)
    b = sample_label(np.random.default_rng(3), PRODUCT, 0.5, LOT, 5, TODAY)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and a[1:] == b[1:]
    assert a[0].size == SPEC.frame_size and max(a[0].size) <= 320 and a[0].mode == "RGB"
    c = sample_label(np.random.default_rng(4), PRODUCT, 0.5, LOT, 5, TODAY)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


@pytest.mark.parametrize("product", sorted(LABEL_PRODUCTS))
def test_every_product_reads_back_what_it_printed(product: str) -> None:
    spec = LABEL_PRODUCTS[product]
    params = LabelParams(gtin=spec.gtin)
    rng = np.random.default_rng(21)
    for seq in range(3):
        img, defect, truth = sample_label(rng, product, 0.0, LOT, seq, TODAY)
        assert defect is None and img.size == spec.frame_size and max(img.size) <= 320
        v = read_label(np.asarray(img), params, today=TODAY).values
        assert (v["gtin"], v["lot"], v["serial"], v["expiry"]) == (
            spec.gtin, LOT, truth.serial, truth.expiry.isoformat()
        )


def test_a_code_that_does_not_fit_its_label_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LABEL_PRODUCTS, "cramped", replace(SPEC, product_id="cramped", label_size=(200, 90)))
    content = LabelContent(SPEC.gtin, LOT, TODAY, serial_for(1))
    with pytest.raises(ValueError, match="does not fit the label"):
        render_label(np.random.default_rng(0), "cramped", content, False)


def test_serials_are_unique_per_seq() -> None:
    serials = {serial_for(i) for i in range(20_000)}
    assert len(serials) == 20_000 and all(len(s) == 12 and s.isdigit() for s in serials)
    with pytest.raises(ValueError, match="seq"):
        serial_for(-1)


def test_truth_of_each_defect(samples: dict[tuple[str, bool], list[Sample]]) -> None:
    for (kind, _), items in samples.items():
        for _, defect, truth in items:
            c = truth.content
            assert defect == (None if kind == "good" else kind)
            assert (c.gtin == SPEC.gtin) == (kind != "wrong-gtin")
            assert (c.lot == LOT) == (kind != "wrong-lot")
            assert (c.expiry < TODAY) == (kind == "expired")
            assert (truth.damage is not None) == (kind == "unreadable")
            if kind == "duplicate-serial":
                assert truth.duplicate_of is not None and c.serial == serial_for(truth.duplicate_of)
            if c.expiry_day00:
                assert (c.expiry + timedelta(days=1)).day == 1  # YYMM00: the month's last day


def test_unit_zero_never_repeats_a_serial() -> None:
    rng = np.random.default_rng(0)
    assert all(sample_label(rng, PRODUCT, 1.0, LOT, 0, TODAY)[1] != "duplicate-serial" for _ in range(15))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"product": "nope"}, "unknown label product"), ({"defect_rate": 1.5}, "defect_rate"),
     ({"subtle_fraction": -0.1}, "subtle_fraction")],
)
def test_sample_label_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"product": PRODUCT, "defect_rate": 0.5, "lot": LOT, "seq": 1, "today": TODAY}
    with pytest.raises(ValueError, match=message):
        sample_label(np.random.default_rng(0), **(args | kwargs))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- reading and judging


def test_good_labels_read_exactly_and_pass(samples: dict[tuple[str, bool], list[Sample]]) -> None:
    for img, _, truth in samples[("good", False)]:
        m = read_label(np.asarray(img), PARAMS, today=TODAY)
        v = m.values
        assert v["decoded"] and v["gs1"] and v["symbology"] == "]d2" and v["codes"] == 1
        assert (v["gtin"], v["lot"], v["serial"]) == (truth.gtin, truth.lot, truth.serial)
        assert v["expiry"] == truth.expiry.isoformat()
        assert "\x1d21" + truth.serial in str(v["text"])  # GS before the serial, JSON-safe
        assert Measurement.from_json(m.to_json()) == m
        j = judge_label(m, PARAMS, LOT, TODAY)
        assert (j.verdict, j.defect, j.reasons) == ("pass", "none", [])
        assert j.flags == {"serial": truth.serial}
        assert j.measurements["remaining_shelf_life_days"] == (truth.expiry - TODAY).days


@pytest.mark.parametrize(
    ("defect", "reason"),
    [
        ("unreadable", "no DataMatrix could be decoded"),
        ("wrong-gtin", f"is not the recipe's {SPEC.gtin}"),
        ("wrong-lot", f"is not the batch's {LOT}"),
        ("expired", "days ago"),
    ],
)
@pytest.mark.parametrize("subtle", [False, True])
def test_each_defect_is_judged_with_its_reason(
    samples: dict[tuple[str, bool], list[Sample]], defect: str, reason: str, subtle: bool
) -> None:
    for img, _, truth in samples[(defect, subtle)]:
        j = judge_label(read_label(np.asarray(img), PARAMS, today=TODAY), PARAMS, LOT, TODAY)
        assert (j.verdict, j.defect) == ("reject", defect), (truth, j)
        assert reason in j.reasons[0]
        if defect != "unreadable":
            assert j.flags["serial"] == truth.serial  # a rejected label's serial is still recorded


def test_every_damage_kind_destroys_the_code(samples: dict[tuple[str, bool], list[Sample]]) -> None:
    seen = set()
    for subtle in (False, True):
        for img, _, truth in samples[("unreadable", subtle)]:
            assert not read_label(np.asarray(img), PARAMS).values["decoded"], truth.damage
            seen.add((truth.damage, subtle))
    assert seen == {(d, s) for d in DAMAGES for s in (False, True)}


def test_duplicate_serial_is_found_by_the_tracker(samples: dict[tuple[str, bool], list[Sample]]) -> None:
    img, _, truth = samples[("duplicate-serial", False)][0]
    assert truth.duplicate_of is not None
    tracker = SerialTracker()
    original = read_label(
        np.asarray(render_label(np.random.default_rng(1), PRODUCT, truth.content, False)), PARAMS
    )
    first = judge_label(original, PARAMS, LOT, TODAY)
    repeat = judge_label(read_label(np.asarray(img), PARAMS), PARAMS, LOT, TODAY)
    assert first.verdict == repeat.verdict == "pass"  # each label alone is right
    assert not tracker.seen("line-1", LOT, first.flags["serial"])
    assert tracker.seen("line-1", LOT, repeat.flags["serial"])
    assert not tracker.seen("line-2", LOT, repeat.flags["serial"])  # per line


def _code_frame(text: str, gs1: bool) -> np.ndarray:
    """A clean frame holding one DataMatrix of `text` (for content the renderer never prints)."""
    symbol = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.DataMatrix, gs1=gs1)
    return np.pad(np.asarray(symbol.to_image(scale=4)), 30, constant_values=255)


def test_plain_datamatrix_is_unreadable_as_gs1() -> None:
    m = read_label(_code_frame(f"(01){SPEC.gtin}(17)281231(10){LOT}(21)1", gs1=False), PARAMS)
    assert m.values["decoded"] and not m.values["gs1"] and m.values["symbology"] == "]d1"
    j = judge_label(m, PARAMS, LOT, TODAY)
    assert (j.verdict, j.defect) == ("reject", "unreadable") and "not GS1" in j.reasons[0]


def test_invalid_gs1_data_is_unreadable_with_the_parse_error() -> None:
    # zxing-cpp writes GS1 data as given; an AI the table does not know fails the parse.
    m = read_label(_code_frame(f"(01){SPEC.gtin}(98)X(10){LOT}", gs1=True), PARAMS)
    assert "unsupported application identifier" in str(m.values["parse_error"])
    j = judge_label(m, PARAMS, LOT, TODAY)
    assert j.defect == "unreadable" and j.reasons[0].startswith("GS1 data invalid")


def test_missing_elements() -> None:
    m = read_label(_code_frame(f"(01){SPEC.gtin}(17)281231(10){LOT}", gs1=True), PARAMS, today=TODAY)
    j = judge_label(m, PARAMS, LOT, TODAY)
    assert j.defect == "unreadable" and "no serial number (21)" in j.reasons[0]
    relaxed = PARAMS.model_copy(update={"require_serial": False})
    assert judge_label(m, relaxed, LOT, TODAY).verdict == "pass"
    bare = judge_label(read_label(_code_frame("(21)77", gs1=True), PARAMS), PARAMS, LOT, TODAY)
    assert bare.defect == "wrong-gtin"
    assert [r.split(" (")[0] for r in bare.reasons] == [
        "code carries no GTIN", "code carries no lot", "code carries no expiry date"
    ]


def _measured(expiry: date, gtin: str = SPEC.gtin, lot: str = LOT) -> Measurement:
    return Measurement(values={"decoded": True, "gs1": True, "symbology": "]d2", "text": "", "codes": 1,
                               "gtin": gtin, "lot": lot, "serial": "S1", "expiry": expiry.isoformat()})


def test_minimum_shelf_life() -> None:
    assert judge_label(_measured(TODAY + timedelta(days=30)), PARAMS, LOT, TODAY).verdict == "pass"
    j = judge_label(_measured(TODAY + timedelta(days=29)), PARAMS, LOT, TODAY)
    assert j.defect == "expired" and "leaves 29 days of shelf life; the recipe requires 30" in j.reasons[0]
    no_margin = LabelParams(gtin=SPEC.gtin)
    assert judge_label(_measured(TODAY), no_margin, LOT, TODAY).verdict == "pass"  # usable through its day
    assert judge_label(_measured(TODAY - timedelta(days=1)), no_margin, LOT, TODAY).defect == "expired"


def test_all_failing_checks_are_reasons_first_is_the_defect() -> None:
    j = judge_label(_measured(TODAY - timedelta(days=3), gtin="00000096385074", lot="L1"), PARAMS, LOT, TODAY)
    assert j.defect == "wrong-gtin" and len(j.reasons) == 3
    assert "lot L1 is not the batch's" in j.reasons[1] and "3 days ago" in j.reasons[2]


# --------------------------------------------------------------------------- recipe section and bad input


def test_params_normalise_the_gtin() -> None:
    assert LabelParams(gtin="9506000134352").gtin == SPEC.gtin
    assert LabelParams(gtin="96385074").gtin == "00000096385074"
    p = LabelParams.model_validate_json(json.dumps({"gtin": SPEC.gtin}))
    assert (p.min_remaining_shelf_life_days, p.require_serial) == (0, True)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"gtin": "09506000134353"}, "check digit 3, expected 2"),
        ({"gtin": "95060001343"}, "8, 12, 13 or 14 digits"),
        ({"gtin": 9506000134352}, "leading zeros matter"),
        ({}, "gtin"),
        ({"gtin": SPEC.gtin, "min_remaining_shelf_life_days": -1}, "greater than or equal to 0"),
        ({"gtin": SPEC.gtin, "min_remaining_shelf_life_days": 99999}, "less than or equal to 3660"),
        ({"gtin": SPEC.gtin, "min_shelf_life": 30}, "Extra inputs are not permitted"),
    ],
)
def test_params_refuse_impossible_values(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LabelParams.model_validate(doc)


def test_bad_frames_and_params_are_refused_with_the_reason(samples: dict[tuple[str, bool], list[Sample]]) -> None:
    with pytest.raises(ValueError, match="not a decodable PNG/JPEG"):
        decode_rgb(b"not an image")
    with pytest.raises(ValueError, match="empty"):
        decode_rgb(b"")
    img = samples[("good", False)][0][0]
    with pytest.raises(ValueError, match="invalid PARAMS: gtin"):
        parse_params(LabelParams, b'{"gtin": "123"}')
    with pytest.raises(ValueError, match="must be uint8"):
        read_label(np.zeros((50, 50), np.float32), PARAMS)
    with pytest.raises(ValueError, match="shape"):
        read_label(np.zeros((5, 50, 50), np.uint8), PARAMS)
    with pytest.raises(ValueError, match="too small"):
        read_label(np.zeros((8, 8), np.uint8), PARAMS)
    with pytest.raises(ValueError, match="batch lot"):
        judge_label(_measured(TODAY), PARAMS, " ", TODAY)
    # JPEG frames read as well as PNG ones.
    assert read_label_frame(decode_rgb(encode_jpeg(img, 90)), PARAMS).values["decoded"]


# --------------------------------------------------------------------------- serial tracker


def test_serial_tracker_is_bounded() -> None:
    t = SerialTracker(max_per_lot=3, max_lots=2)
    assert [t.seen("l", "A", s) for s in ("1", "2", "1", "3", "4")] == [False, False, True, False, False]
    assert t.count("l", "A") == 3 and not t.seen("l", "A", "1")  # "1" was the oldest: dropped
    t.seen("l", "B", "1")
    t.seen("l", "C", "1")  # third lot: A (least recently used) is dropped
    assert t.count("l", "A") == 0 and t.count("l", "B") == 1
    t.forget("l", "B")
    assert t.count("l", "B") == 0
    with pytest.raises(ValueError):
        t.seen("l", "A", "")
    with pytest.raises(ValueError):
        SerialTracker(max_per_lot=0)


# --------------------------------------------------------------------------- Triton model logic


@pytest.fixture(scope="module")
def model_module() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("label_reader_model", MODEL_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


def test_model_measures_a_request(model_module: ModuleType, samples: dict[tuple[str, bool], list[Sample]]) -> None:
    (good, _, truth), (bad, _, _) = samples[("good", False)][0], samples[("unreadable", False)][0]
    images = np.array([[encode_png(good)], [encode_png(bad)]], dtype=object)
    params = np.array([[PARAMS.model_dump_json().encode()]] * 2, dtype=object)
    out = model_module.measure_request(images, params, TODAY)
    assert out.shape == (2, 1)
    first, second = (Measurement.from_json(x) for x in out[:, 0])
    assert first.values["serial"] == truth.serial and first.values["decoded"]
    assert second.values["decoded"] is False  # unreadable is a measurement, not an error
    with pytest.raises(ValueError, match=r"1 of 2 frame\(s\) not measured: item 1: not a decodable"):
        model_module.measure_request(np.array([[encode_png(good)], [b"junk"]], dtype=object), params)
    with pytest.raises(ValueError, match="1 IMAGE item"):
        model_module.measure_request(images[:1], params)


def test_label_content_hri_round_trips() -> None:
    c = LabelContent(SPEC.gtin, LOT, date(2028, 2, 29), "000000000001", expiry_day00=True)
    assert c.hri() == f"(01){SPEC.gtin}(17)280200(10){LOT}(21)000000000001"
