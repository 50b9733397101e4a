"""`linesight knapp run` through the real embedded Triton: a rendered tablet qualification set,
each unit presented 3 times with variation, against synthetic manual results; every figure of
knapp.json is counted back from the per-presentation verdicts Triton gave (presentations.csv),
none is hard-coded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from support import LIVE_TABLET_MODEL

from pipeline.cli.knapp import NOT_EQUIVALENT_EXIT
from pipeline.cli.main import main
from pipeline.datasets.folder import load_dataset
from pipeline.settings import Settings
from pipeline.validation.knapp import EQUIVALENT, read_manual, simulate_inputs, zone

PRODUCT = "tablet-round-white-10mm"
RUNS, GOOD = 3, 60

needs_model = pytest.mark.skipif(not LIVE_TABLET_MODEL.exists(), reason="tablet model not trained (make model)")


@needs_model
def test_knapp_study_through_embedded_triton(
    tmp_path: Path, embedded_settings: Settings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    set_dir, manual_csv = simulate_inputs(tmp_path / "inputs", 20, PRODUCT, subtle_fraction=0.5, seed=7)
    monkeypatch.setenv("LINESIGHT_STATE_DIR", str(embedded_settings.state_dir))
    monkeypatch.delenv("LINESIGHT_TRITON__URL", raising=False)  # the command starts its own Triton
    out = tmp_path / "study"
    code = main(["knapp", "run", "--set", str(set_dir), "--manual", str(manual_csv), "--runs", str(RUNS),
                 "--good-count", str(GOOD), "--seed", "4", "--out", str(out), "--json"])
    study = json.loads(capsys.readouterr().out)
    assert code == (0 if study["verdict"] == EQUIVALENT else NOT_EQUIVALENT_EXIT)
    assert (out / "knapp.pdf").read_bytes().startswith(b"%PDF")
    assert json.loads((out / "knapp.json").read_text()) == study

    # The served model judged it: the live tablet classifier, its own thresholds, its invariance.
    assert study["model"] == "tablet_inspector" and study["classifier"] == "tablet_classifier"
    assert study["model_version"] == int(LIVE_TABLET_MODEL.parent.name)
    assert set(study["thresholds"]) == {"review", "reject"}
    assert study["variation"]["invariance"] == "any-orientation" and study["variation"]["seed"] == 4

    with open(out / "presentations.csv", newline="", encoding="utf-8") as f:
        shown = list(csv.DictReader(f))
    knapp_rows = [p for p in shown if p["study"] == "knapp"]
    good_rows = [p for p in shown if p["study"] == "good"]
    assert len(knapp_rows) == 20 * RUNS and len(good_rows) == GOOD
    assert all(p["error"] == "" for p in shown)
    assert {p["model_version"] for p in shown} == {str(study["model_version"])}
    review, reject = study["thresholds"]["review"], study["thresholds"]["reject"]
    for p in shown:  # each verdict is the version's thresholds applied to Triton's score
        score = float(p["score"])
        if abs(score - reject) > 1e-5 and abs(score - review) > 1e-5:
            assert p["verdict"] == ("reject" if score > reject else "review" if score > review else "pass")

    machine: dict[str, int] = {}
    for p in knapp_rows:
        machine[p["unit"]] = machine.get(p["unit"], 0) + (p["verdict"] != "pass")
    manual = read_manual(manual_csv, load_dataset(set_dir))
    units = {u["unit"]: u for u in study["units"]}
    assert set(units) == set(machine) == set(manual.rejections)
    for name, u in units.items():
        assert u["machine_rejections"] == machine[name] and u["machine_inspections"] == RUNS
        assert u["manual_rejections"] == manual.rejections[name] and u["manual_inspections"] == 30
        assert u["zone_machine"] == zone(machine[name], RUNS)
    reject_zone = [n for n in units if zone(manual.rejections[n], 30) == "reject"]
    assert reject_zone
    fq_manual = sum(manual.rejections[n] / 30 for n in reject_zone)
    fq_machine = sum(machine[n] / RUNS for n in reject_zone)
    f = study["figures"]
    assert f["reject_zone_units"] == len(reject_zone)
    assert f["fq_manual"] == pytest.approx(fq_manual) and f["fq_machine"] == pytest.approx(fq_machine)
    assert f["rze"] == pytest.approx(fq_machine / fq_manual)
    assert study["verdict"] == (EQUIVALENT if fq_machine / fq_manual >= 1 else "not equivalent")
    assert study["machine_accepts_manual_rejects"] == [
        n for n in units if n in reject_zone and zone(machine[n], RUNS) == "accept"]

    fr = study["false_reject"]
    rejected_good = sum(p["verdict"] != "pass" for p in good_rows)
    assert fr["presentations"] == GOOD and fr["rejected"] == rejected_good
    assert fr["rate"] == pytest.approx(rejected_good / GOOD) and fr["upper95"] > fr["rate"]
    assert {p["unit"] for p in good_rows} == {n for n, u in units.items() if u["label"] == "good"}
