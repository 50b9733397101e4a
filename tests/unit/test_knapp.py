"""The Knapp study (docs/validation.md): zones at exact limits, the manual results CSV and its
refusals, FQ/RZE and the verdict, the seeded presentation variation within the product's
invariance, a whole study with a stand-in for Triton (figures counted back from
presentations.csv), and the PDF rendered to PNG: the figures appear, nothing leaves the page.
The same study through the real embedded Triton is tests/e2e/test_knapp_triton.py."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_pages import assert_readable, pdf_pages

from pipeline.cli.main import main
from pipeline.datasets.folder import Dataset, Row, load_dataset, write_dataset
from pipeline.settings import Settings
from pipeline.validation import knapp
from pipeline.validation.knapp import (
    EQUIVALENT,
    NOT_EQUIVALENT,
    KnappError,
    UnitResult,
    Variation,
    knapp_figures,
    present,
    read_manual,
    unit_stream,
    zone,
)
from streams.triton_client import Failed, Scored

PRODUCT = "tablet-round-white-10mm"


# ----------------------------------------------------------------------------- zones and figures


def test_zone_limits_are_exact() -> None:
    assert zone(3, 10) == "accept" and zone(9, 30) == "accept"  # p = 0.3 exactly: accept
    assert zone(4, 10) == "grey" and zone(20, 30) == "grey"
    assert zone(7, 10) == "reject" and zone(21, 30) == "reject"  # p = 0.7 exactly: reject
    assert zone(0, 1) == "accept" and zone(1, 1) == "reject"


def _unit(name: str, km: int, ka: int, label: str = "defect", n_manual: int = 30, n_machine: int = 10) -> UnitResult:
    return UnitResult(name, label, "crack" if label == "defect" else "none", km, n_manual, ka, n_machine)


def test_fq_and_rze_sum_over_the_manual_reject_zone_only() -> None:
    units = [
        _unit("a", 30, 10), _unit("b", 24, 6),  # manual reject zone: p 1.0 and 0.8; machine 1.0 and 0.6
        _unit("c", 21, 2),  # manual reject zone (0.7), machine accepts (0.2)
        _unit("d", 15, 10),  # manual grey: not in any sum, however well the machine does
        _unit("e", 0, 0, "good"), _unit("f", 3, 8, "good"),  # machine rejects what manual accepts
    ]
    f = knapp_figures(units)
    assert f["reject_zone_units"] == 3
    assert f["fq_manual"] == pytest.approx(1.0 + 0.8 + 0.7)
    assert f["fq_machine"] == pytest.approx(1.0 + 0.6 + 0.2)
    assert f["rze"] == pytest.approx(1.8 / 2.5)
    assert f["rze_manual"] == pytest.approx(2.5 / 3) and f["rze_machine"] == pytest.approx(1.8 / 3)
    assert f["zones_manual"] == {"accept": 2, "grey": 1, "reject": 3}
    assert f["zones_machine"] == {"accept": 2, "grey": 1, "reject": 3}
    assert f["zone_matrix"]["reject"] == {"accept": 1, "grey": 1, "reject": 1}
    assert f["zone_matrix"]["accept"] == {"accept": 1, "grey": 0, "reject": 1}


# ----------------------------------------------------------------------------- manual CSV


def _set(tmp_path: Path, labels: list[str]) -> Dataset:
    rows = []
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        path = tmp_path / "set" / ("good" if label == "good" else "crack") / f"u{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
        rows.append(Row(path, PRODUCT, label, "none" if label == "good" else "crack"))
    write_dataset(tmp_path / "set", rows)
    return load_dataset(tmp_path / "set", PRODUCT)


def _csv(path: Path, rows: list[list[object]], header: str = "unit,inspector,inspections,rejections") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_manual_results_pool_inspectors_and_accept_file_names(tmp_path: Path) -> None:
    ds = _set(tmp_path, ["defect", "good"])
    manual = read_manual(_csv(tmp_path / "m.csv", [
        ["crack/u000.png", "ann", 10, 9], ["u000", "bob", 10, 7],  # a unit by its path or its file name
        ["good/u001.png", "ann", 10, 0], ["u001", "bob", 10, 1],
    ]), ds)
    assert manual.inspectors == ("ann", "bob") and manual.inspections == 10 and manual.per_unit == 20
    assert manual.rejections == {"crack/u000.png": 16, "good/u001.png": 1}


def test_manual_results_refusals_name_every_problem(tmp_path: Path) -> None:
    ds = _set(tmp_path, ["defect", "good", "defect"])
    with pytest.raises(KnappError) as err:
        read_manual(_csv(tmp_path / "m.csv", [
            ["crack/u000.png", "ann", 10, 9], ["crack/u000.png", "ann", 10, 8],  # twice
            ["good/u001.png", "ann", 10, 11],  # more rejections than inspections
            ["u002", "ann", 10, "x"],  # not a number
            ["u009", "ann", 10, 1],  # unknown unit
            ["u000", "bob", 8, 5],  # inconsistent n
            ["u001", "bob", 10, 0],
        ]), ds)
    text = str(err.value)
    assert "already has a row for this unit (line 2)" in text
    assert "rejections 11 not within 0..10" in text
    assert "rejections 'x' is not a whole number" in text
    assert "unknown unit 'u009'" in text
    assert "inconsistent n: 8 inspections by 'bob'" in text
    assert "inspector 'bob' has no row for 1 unit(s) of the set: crack/u002.png" in text
    with pytest.raises(KnappError, match="missing column"):
        read_manual(_csv(tmp_path / "h.csv", [["u000", "ann", 9]], "unit,inspector,rejected"), ds)
    with pytest.raises(KnappError, match="no rows"):
        read_manual(_csv(tmp_path / "e.csv", []), ds)


# ----------------------------------------------------------------------------- presentation


def _tablet() -> Image.Image:
    from pipeline.imaging.tablets import render_tablet

    return render_tablet(np.random.default_rng(3), PRODUCT, None, size=96)


def test_presentation_is_seeded_per_unit_and_run() -> None:
    img, var = _tablet(), Variation(invariance="any-orientation", seed=5)
    a = np.asarray(present(img, var, unit_stream(0, "good/1.png", 2, 5)))
    b = np.asarray(present(img, var, unit_stream(0, "good/1.png", 2, 5)))
    c = np.asarray(present(img, var, unit_stream(0, "good/1.png", 3, 5)))
    assert a.shape == np.asarray(img).shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    d = np.asarray(present(img, var, unit_stream(1, "good/1.png", 2, 5)))  # the false-reject test's stream
    assert not np.array_equal(a, d)


def test_an_upright_unit_is_never_turned_over() -> None:
    """A vial's fill level stays at the bottom: with `upright`, only a left-right mirror is drawn."""
    frame = np.zeros((40, 20), dtype=np.uint8)
    frame[30:, :] = 200  # the liquid at the bottom
    frame[30:, :5] = 255  # and a mark on its left
    img = Image.fromarray(frame)
    var = Variation(max_shift_px=0, light=(1.0, 1.0), blur_px=(0.0, 0.0), invariance="upright")
    seen = set()
    for run in range(16):
        out = np.asarray(present(img, var, unit_stream(0, "v", run, 0)))
        assert out[30:].min() >= 200 and out[:30].max() == 0
        seen.add(int(out[35, 0]))
    assert seen == {200, 255}  # both mirror states occur
    fixed = Variation(max_shift_px=0, light=(1.0, 1.0), blur_px=(0.0, 0.0), invariance="fixed")
    assert np.array_equal(np.asarray(present(img, fixed, unit_stream(0, "v", 1, 0))), frame)


def test_variation_ranges_are_checked() -> None:
    with pytest.raises(KnappError, match="light gain"):
        Variation(light=(1.2, 0.9)).check()
    with pytest.raises(KnappError, match="unknown invariance"):
        Variation(invariance="sideways").check()


# ----------------------------------------------------------------------------- a whole study


class _Inspector:
    """Stands in for Triton: the score is the image's mean brightness on a fixed scale, so brighter
    presentations of a unit are rejected (review between the thresholds)."""

    def __init__(self, _settings: object) -> None:
        pass

    async def score(self, _model: str, images: list[bytes]) -> list[Scored | Failed]:
        import io

        out: list[Scored | Failed] = []
        for data in images:
            mean = float(np.asarray(Image.open(io.BytesIO(data)).convert("L")).mean())
            if mean > 250:
                out.append(Failed("triton: too bright"))
                continue
            s = min(1.0, max(0.0, (mean - 100.0) / 60.0))
            out.append(Scored(s, {"good": 1 - s, "crack": s}, 0.4, 0.6, 1, "tablet_classifier"))
        return out

    async def close(self) -> None:
        pass


@contextmanager
def _no_triton(settings: Settings, *_args: object) -> Iterator[Settings]:
    yield settings


def _grey_set(tmp_path: Path, units: list[tuple[int, str]]) -> Path:
    """Flat grey units (level, label) at `label/NNN.png`."""
    rows = []
    for i, (level, label) in enumerate(units):
        path = tmp_path / "set" / label / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32), level, dtype=np.uint8)).save(path)
        rows.append(Row(path, PRODUCT, label, "crack" if label == "defect" else "none"))
    write_dataset(tmp_path / "set", rows)
    return tmp_path / "set"


def _study_inputs(tmp_path: Path) -> tuple[Path, Path]:
    # (grey level, label, manual rejections per inspector of 10). Levels near the review threshold
    # (score 0.4 at 124) flicker between runs; the defect at 104 the inspectors see, the machine never.
    units = [(80, "good", 0), (90, "good", 1), (95, "good", 0), (100, "good", 2), (104, "defect", 9),
             (122, "defect", 8), (126, "defect", 9), (130, "defect", 10), (160, "defect", 10),
             (200, "defect", 10), (122, "good", 3), (125, "defect", 7)]
    set_dir = _grey_set(tmp_path, [(level, label) for level, label, _ in units])
    rows = []
    for i, (_, label, k) in enumerate(units):
        for j, inspector in enumerate(("ann", "bob", "cyd")):
            rows.append([f"{label}/{i:03d}.png", inspector, 10, max(0, min(10, k + (j - 1) * (k not in (0, 10))))])
    return set_dir, _csv(tmp_path / "manual.csv", rows)


def test_a_whole_study_counts_its_figures_from_the_presentations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(knapp, "TritonInspector", _Inspector)
    monkeypatch.setattr(knapp, "serving", _no_triton)
    set_dir, manual_csv = _study_inputs(tmp_path)
    settings = Settings()
    variation = Variation(max_shift_px=2, light=(0.9, 1.1), blur_px=(0.0, 0.5))
    study = knapp.run_study(settings, set_dir, manual_csv, tmp_path / "out", runs=6, good_count=40, seed=3,
                            variation=variation, invariance="fixed")

    with open(tmp_path / "out" / "presentations.csv", newline="", encoding="utf-8") as f:
        shown = list(csv.DictReader(f))
    assert len(shown) == 12 * 6 + 40
    rejected: dict[str, int] = {}
    for p in shown:
        if p["study"] == "knapp":
            rejected[p["unit"]] = rejected.get(p["unit"], 0) + (p["verdict"] != "pass")
    manual = read_manual(manual_csv, load_dataset(set_dir))
    units = {u["unit"]: u for u in study.units}
    for name, k in rejected.items():
        assert units[name]["machine_rejections"] == k and units[name]["machine_inspections"] == 6
        assert units[name]["p_manual"] == manual.rejections[name] / 30
    reject_zone = [u for u in study.units if zone(u["manual_rejections"], 30) == "reject"]
    fq_manual = sum(u["manual_rejections"] / 30 for u in reject_zone)
    fq_machine = sum(rejected[u["unit"]] / 6 for u in reject_zone)
    assert study.figures["rze"] == pytest.approx(fq_machine / fq_manual)
    assert study.verdict == (EQUIVALENT if fq_machine >= fq_manual else NOT_EQUIVALENT)
    assert any(0 < k < 6 for k in rejected.values())  # the variation moves units across a threshold
    good = [p for p in shown if p["study"] == "good"]
    assert {p["unit"] for p in good} == {u for u in units if units[u]["label"] == "good"}
    fr = study.false_reject
    assert fr is not None and fr["presentations"] == 40
    assert fr["rejected"] == sum(p["verdict"] != "pass" for p in good)
    assert study.variation["invariance"] == "fixed" and study.variation["seed"] == 3
    assert study.model == "tablet_inspector" and study.model_version == 1

    data = json.loads((tmp_path / "out" / "knapp.json").read_text())
    assert data["set"]["content_hash"] == study.set["content_hash"] and len(data["units"]) == 12
    assert data["figures"]["rze"] == pytest.approx(study.figures["rze"])

    again = knapp.run_study(settings, set_dir, manual_csv, tmp_path / "again", runs=6, good_count=40, seed=3,
                            variation=variation, invariance="fixed")
    assert again.units == study.units and again.false_reject == study.false_reject  # seeded: repeats exactly


def test_study_refuses_before_presenting_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knapp, "serving", lambda *a: pytest.fail("started serving"))  # type: ignore[arg-type]
    set_dir = _grey_set(tmp_path, [(80, "good"), (130, "defect")])
    no_rejects = _csv(tmp_path / "m.csv", [["good/000.png", "ann", 10, 0], ["defect/001.png", "ann", 10, 5]])
    with pytest.raises(KnappError, match="no unit is in the manual method's reject zone"):
        knapp.run_study(Settings(), set_dir, no_rejects, tmp_path / "out")
    ok = _csv(tmp_path / "ok.csv", [["good/000.png", "ann", 10, 0], ["defect/001.png", "ann", 10, 9]])
    with pytest.raises(KnappError, match="--runs"):
        knapp.run_study(Settings(), set_dir, ok, tmp_path / "out", runs=0)
    only_defects = _grey_set(tmp_path / "d", [(130, "defect")])
    with pytest.raises(KnappError, match="no good units"):
        knapp.run_study(Settings(), set_dir, ok, tmp_path / "out", good_dir=only_defects)


def test_cli_exit_status_follows_the_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(knapp, "TritonInspector", _Inspector)
    monkeypatch.setattr(knapp, "serving", _no_triton)
    set_dir = _grey_set(tmp_path, [(80, "good"), (200, "defect")])
    manual = _csv(tmp_path / "m.csv", [["good/000.png", "ann", 10, 0], ["defect/001.png", "ann", 10, 7]])
    base = ["knapp", "run", "--set", str(set_dir), "--manual", str(manual), "--runs", "3", "--good-count", "5",
            "--invariance", "fixed"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0  # the machine always rejects the bright unit
    assert "EQUIVALENT OR BETTER" in capsys.readouterr().out
    dim = _csv(tmp_path / "dim.csv", [["good/000.png", "ann", 10, 10], ["defect/001.png", "ann", 10, 7]])
    assert main([*base, "--manual", str(dim), "--out", str(tmp_path / "b")]) == 3  # the dark unit: never rejected
    assert "NOT EQUIVALENT" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse: MIN above MAX
        main([*base, "--light", "2:1", "--out", str(tmp_path / "c")])
    assert "MIN is above MAX" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the PDF


def test_report_renders_readable_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PDF, rendered as a person sees it: the figures, the verdict and the discordant unit are on
    the pages, and no text or ink reaches into the outer 5 mm of any page."""
    monkeypatch.setattr(knapp, "TritonInspector", _Inspector)
    monkeypatch.setattr(knapp, "serving", _no_triton)
    set_dir, manual_csv = _study_inputs(tmp_path)
    study = knapp.run_study(Settings(), set_dir, manual_csv, tmp_path / "out", runs=10, good_count=200, seed=1,
                            variation=Variation(max_shift_px=2, light=(0.9, 1.1)), invariance="fixed")
    pages = pdf_pages(tmp_path / "out" / "knapp.pdf", tmp_path / "pages")
    f = study.figures
    fr = study.false_reject
    assert fr is not None
    assert study.machine_accepts_manual_rejects  # the dim unit the inspectors reject: named in the report
    assert_readable(pages, (
        f"Knapp study - {PRODUCT}", study.verdict.upper(), f"RZE {f['rze']:.3f}", f"{f['fq_manual']:.2f}",
        f"{f['fq_machine']:.2f}", study.set["content_hash"], "tablet_classifier version 1",
        "RZE = FQ(machine) / FQ(manual)", f"{100 * fr['rate']:.2f} %", f"{100 * fr['upper95']:.2f} %",
        "manual rejection probability", "machine rejection probability", "seed 1",
        *study.machine_accepts_manual_rejects, *(u["unit"] for u in study.units),
    ))
