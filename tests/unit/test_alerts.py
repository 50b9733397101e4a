"""Alert detectors, the alert book and the engine: pure, driven with a fake clock."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.alerts.detectors import (
    DriftDetector,
    FrozenDetector,
    PChart,
    QualityDetector,
    RunDetector,
    frame_quality,
    ks_statistic,
    p_limits,
    psi,
    quality_problems,
)
from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.record import AlertBook, AlertRecord
from pipeline.imaging.tablets import sample_unit
from pipeline.wire.codec import encode_png
from pipeline.wire.messages import FrameMeta, Heartbeat, InspectionResult

S = 1_000_000_000
PRODUCT = "tablet-round-white-10mm"


def result(unit: str, verdict: str = "pass", score: float = 0.1, line: str = "line-1",
           defect: str = "none") -> InspectionResult:
    return InspectionResult(unit, line, "cam-1", PRODUCT, "lot", verdict, "model", True,  # type: ignore[arg-type]
                            defect if verdict != "pass" else "none", score, 0.5, "tablet_classifier", "3",
                            0, 0, 0, "w0")


def test_p_limits_and_chart_flags_an_excursion_and_keeps_it_out_of_the_baseline() -> None:
    lcl, ucl = p_limits(0.1, 100)
    assert lcl == pytest.approx(0.01) and ucl == pytest.approx(0.19)
    chart = PChart(min_baseline=5)
    for i in range(6):
        pt = chart.add(i, 100, 10)
    assert pt.center == pytest.approx(0.1) and not pt.out_of_control
    bad = chart.add(7, 100, 40)
    assert bad.out_of_control and bad.ucl == pytest.approx(0.19)
    assert chart.center() == pytest.approx(0.1)  # the excursion did not move the centre line
    assert chart.add(8, 2, 2).ucl is None  # too few units to judge


def test_run_detector() -> None:
    run = RunDetector(3)
    assert [run.observe(x) for x in (True, True, True, True, False, True)] == [
        False, False, True, True, False, False]


def test_psi_and_ks_separate_shifted_scores() -> None:
    rng = np.random.default_rng(0)
    ref = rng.beta(2, 8, 2000)
    same = rng.beta(2, 8, 500)
    shifted = rng.beta(5, 5, 500)
    assert psi(ref, same) < 0.1 < 0.25 < psi(ref, shifted)
    assert ks_statistic(ref, same) < 0.1 < ks_statistic(ref, shifted)


def test_drift_detector_baseline_window_then_hysteresis() -> None:
    rng = np.random.default_rng(1)
    det = DriftDetector(baseline_n=300, window=100, every=10)
    states = [det.observe(float(s)) for s in rng.beta(2, 8, 400)]
    assert not det.fixed and len(det.reference) == 300 and all(s in (None, False) for s in states)
    states = [det.observe(float(s)) for s in rng.beta(8, 2, 100)]
    assert states[-1] is True and det.last_psi > 0.25
    # a fixed reference (the model's validation scores) is used as is
    fixed = DriftDetector(reference=list(rng.beta(2, 8, 500)), window=50, every=50)
    assert fixed.fixed and [fixed.observe(0.9) for _ in range(50)][-1] is True


def _gray(seed: int = 3) -> np.ndarray:
    image, _ = sample_unit(np.random.default_rng(seed), PRODUCT, 0.0)
    return np.asarray(image.convert("L"))


def test_frame_quality_problems() -> None:
    g = _gray()
    assert quality_problems(frame_quality(g)) == set()
    assert quality_problems(frame_quality((g * 0.1).astype(np.uint8))) == {"image_dark"}
    assert "image_overexposed" in quality_problems(frame_quality(np.full_like(g, 255)))
    blurred = np.asarray(Image.fromarray(g).filter(ImageFilter.GaussianBlur(3)))
    assert quality_problems(frame_quality(blurred)) == {"image_blurred"}


def test_quality_and_frozen_detectors_need_persistence() -> None:
    q = QualityDetector(raise_after=3, clear_after=2)
    assert not q.observe({"image_dark"})["image_dark"]
    q.observe({"image_dark"})
    assert q.observe({"image_dark"})["image_dark"]
    q.observe(set())
    assert q.observe(set())["image_dark"] is False
    f = FrozenDetector(3)
    assert [f.observe("c", d) for d in "aabbbc"] == [False, False, False, False, True, False]


def test_alert_book_lifecycle() -> None:
    book = AlertBook(refresh_every_s=10)
    (raised,) = book.set("line-1", "reject_run", True, 1 * S, "critical", "8 rejects", 8)
    assert raised.state == "active" and raised.revision == 0 and raised.open
    assert book.set("line-1", "reject_run", True, 2 * S) == []  # refresh kept in memory
    (refreshed,) = book.set("line-1", "reject_run", True, 12 * S)
    assert refreshed.revision == 1 and refreshed.last_seen_ns == 12 * S
    (acked,) = [book.acknowledge(raised.alert_id, "olga", 13 * S)]
    assert acked.acknowledged_by == "olga" and not acked.open and acked.state == "active"
    with pytest.raises(ValueError):
        book.acknowledge(raised.alert_id, "olga", 14 * S)
    with pytest.raises(KeyError):
        book.acknowledge("nope", "olga", 14 * S)
    (cleared,) = book.set("line-1", "reject_run", False, 15 * S)
    assert cleared.state == "cleared" and cleared.acknowledged_by == "olga" and cleared.revision == 3
    assert AlertRecord.from_json(cleared.to_json()) == cleared
    (again,) = book.set("line-1", "reject_run", True, 20 * S)
    assert again.alert_id != raised.alert_id  # a new episode


def test_engine_raises_and_clears_run_missing_frames_and_health() -> None:
    eng = AlertEngine(AlertConfig(run_length=4, missing_after_s=5, heartbeat_stale_s=3))
    png = encode_png(sample_unit(np.random.default_rng(0), PRODUCT, 0.0)[0])
    t = 100 * S
    for i in range(3):  # a camera at 5 frames/s
        eng.on_frame(FrameMeta(f"u{i}", "line-1", "cam-1", PRODUCT, t), png, t + i * S // 5)
    assert any(a.kind == "frames_frozen" for a in eng.book.active.values())  # same bytes 3 times
    out = []
    for i in range(4):
        out += eng.on_result(result(f"u{i}", "reject", 0.9, defect="crack"), t + i)
    assert [a.kind for a in out] == ["reject_run"]
    assert eng.reject_image("u0") == (png, "image/png")
    assert [a.state for a in eng.on_result(result("u9"), t + 10)] == ["cleared"]
    snap = eng.snapshot(t + 20)
    assert snap["lines"][0]["by_class_count"] == {"crack": 4} and snap["lines"][0]["running"]
    assert snap["lines"][0]["models"] == {PRODUCT: "tablet_classifier:3"}
    missing = eng.tick(t + 6 * S)
    assert [a.kind for a in missing] == ["frames_missing"] and "no frame" in missing[0].message
    assert eng.snapshot(t + 6 * S)["lines"][0]["running"] is False
    eng.on_heartbeat(Heartbeat("w0", "worker", t, True), t + 6 * S)
    assert [a.kind for a in eng.tick(t + 10 * S)] == ["pipeline_health"]
    image = Image.open(io.BytesIO(png))
    dark = encode_png(image.point(lambda v: v // 10))
    raised = []
    for i in range(6):
        raised += eng.on_frame(FrameMeta(f"d{i}", "line-1", f"cam-{i}", PRODUCT, t), dark, t + 11 * S)
    kinds = {a.kind for a in raised}
    assert "image_dark" in kinds and "frames_missing" in kinds  # missing cleared by the new frames


def test_a_flood_of_frames_is_sampled_and_huge_frames_are_never_decoded() -> None:
    """Image quality is analysed at most `quality_max_per_s` times per camera, on a reduced grey
    copy; a frame refused from its header (over 4096x4096) is never decoded."""
    eng = AlertEngine(AlertConfig(quality_max_per_s=10))
    png = encode_png(sample_unit(np.random.default_rng(0), PRODUCT, 0.0)[0])
    t = 100 * S
    for i in range(100):  # 100 frames in one second from one camera
        eng.on_frame(FrameMeta(f"u{i}", "line-1", "cam-1", PRODUCT, t), png, t + i * S // 100)
    assert eng.quality_analysed == 10
    assert eng._gray(encode_png(Image.new("L", (4100, 4100)))) is None  # noqa: SLF001 - refused unread
    big = eng._gray(encode_png(Image.new("L", (2000, 1000), 128)))  # noqa: SLF001
    assert big is not None and big.shape == (256, 512)


def test_a_configured_line_that_never_sends_is_missing() -> None:
    eng = AlertEngine(AlertConfig(missing_after_s=5), lines=["line-9"])
    assert eng.tick(1 * S) == []
    (alert,) = eng.tick(7 * S)
    assert alert.kind == "frames_missing" and alert.line == "line-9" and "no frame yet" in alert.message
    assert eng.snapshot(7 * S)["lines"][0]["running"] is False


def test_engine_pchart_excursion() -> None:
    eng = AlertEngine(AlertConfig(interval_s=1, run_length=1000))
    t = 1000 * S
    out = []
    for sec in range(8):
        for i in range(20):
            bad = i < (2 if sec < 7 else 15)
            out += eng.on_result(result(f"{sec}-{i}", "reject" if bad else "pass"), t + sec * S + i)
    out += eng.tick(t + 8 * S)
    assert [a.kind for a in out] == ["reject_rate"]
    pts = eng.snapshot(t + 8 * S)["lines"][0]["pchart"]
    assert pts[-1]["out"] and pts[-1]["ucl"] < pts[-1]["p"]


def test_drift_reference_comes_from_the_judging_versions_model_card(tmp_path) -> None:
    import json

    from pipeline.alerts.engine import AlertEngine
    from pipeline.alerts.reference import CardReferences

    vdir = tmp_path / "tablet_classifier" / "2"
    vdir.mkdir(parents=True)
    quantiles = [i / 100 * 0.2 for i in range(101)]
    (vdir / "model_card.json").write_text(json.dumps({"score_reference": {"quantiles": quantiles}}))
    (tmp_path / "tablet_classifier" / "3").mkdir()  # no card: no reference, the engine's baseline applies
    refs = CardReferences(tmp_path)
    assert refs.get("tablet_classifier:2") == quantiles
    assert refs.get("tablet_classifier:3") is None and refs.get("no-version") is None
    assert CardReferences(None).get("tablet_classifier:2") is None
    engine = AlertEngine(reference_scores=refs)
    assert engine.reference_scores.get("tablet_classifier:2") == quantiles


def test_a_serial_seen_twice_in_a_lot_raises_duplicate_serial_until_the_next_lot() -> None:
    eng = AlertEngine(AlertConfig())

    def label(unit: str, serial: str, lot: str = "LOT-1"):
        return dataclasses.replace(result(unit), lot=lot, measurements={"serial": serial, "gtin": "09506000134352"})

    assert eng.on_result(label("u1", "S1"), 1 * S) == [] and eng.on_result(label("u2", "S2"), 2 * S) == []
    assert eng.on_result(label("u1", "S1"), 3 * S) == []  # the same unit redelivered is no duplicate
    (dup,) = eng.on_result(label("u3", "S1"), 4 * S)
    assert dup.kind == "duplicate_serial" and dup.severity == "critical" and dup.state == "active"
    assert "S1" in dup.message and "u1" in dup.message and "u3" in dup.message
    assert eng.on_result(label("u4", "S9"), 5 * S) == []  # latched while the lot runs
    (cleared,) = eng.on_result(label("v1", "S1", lot="LOT-2"), 6 * S)
    assert cleared.kind == "duplicate_serial" and cleared.state == "cleared"


def test_review_rate_of_a_lot_above_its_recipe_limit() -> None:
    """A lot sending more than its recipe's share of units to review raises review_rate (once it has
    enough units to be a rate); a unit judged by several stations counts once, at its worst verdict;
    the next lot starts afresh."""
    import dataclasses

    engine = AlertEngine(AlertConfig(review_min_units=50), review_limit=lambda ref: 0.10 if ref == "r@v1" else 0.02)
    t = 1_000 * S
    kinds = lambda out: [(a.kind, a.state) for a in out if a.kind == "review_rate"]  # noqa: E731

    def feed(unit: str, verdict: str, lot: str = "L1", station: str = "") -> list:
        r = dataclasses.replace(result(unit, verdict), lot=lot, recipe="r@v1", station=station)
        return kinds(engine.on_result(r, t))

    assert feed("u0", "review") == []  # 1 of 1 in review: not yet a rate
    for i in range(1, 55):
        assert feed(f"u{i}", "review" if i < 5 else "pass") == []  # 5 of 55: 9 %, under 10 %
    assert feed("m1", "review", station="top") == [("review_rate", "active")]  # 6 of 56: 10.7 %
    assert feed("m1", "reject", station="bottom") == [("review_rate", "cleared")]  # m1 is a reject: 5 of 56
    assert feed("u56", "review") == [("review_rate", "active")]  # 6 of 57: 10.5 %
    assert engine.book.active[("line-1", "review_rate")].value == pytest.approx(6 / 57)
    assert "lot L1: 6 of 57 units (10.5 %) in review, above the recipe's 10.0 %" in \
        engine.book.active[("line-1", "review_rate")].message
    assert feed("n0", "pass", lot="L2") == [("review_rate", "cleared")]
