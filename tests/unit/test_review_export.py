"""`dataset export --reviewed`: decided review units become a dataset folder in the project's format,
each image with its decision, decider and audit record; the manifest travels into training's
record of its data (the model card names the decisions it learnt from)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from review_lot import LOT, OTTO, PASSWORDS, QUINN, review_desk

from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.datasets.folder import load_dataset
from pipeline.model.training_sets import dataset_sets
from pipeline.review.desk import ReviewDesk
from pipeline.review.export import ExportError, export_reviewed
from pipeline.settings import Settings

PRODUCT = "tablet-round-white-10mm"


@pytest.fixture()
def decided(embedded_settings: Settings, chdb_client: ChdbClient) -> tuple[ReviewDesk, Settings]:
    desk, settings = review_desk(embedded_settings, chdb_client, "export")
    desk.decide(OTTO, PASSWORDS["otto"], LOT, "u2", "good")
    desk.decide(QUINN, PASSWORDS["quinn"], LOT, "m1", "defect", "chip")
    desk.decide(OTTO, PASSWORDS["otto"], LOT, "u4", "cannot_decide")
    return desk, settings


def test_export_writes_a_dataset_of_decided_units(decided: tuple[ReviewDesk, Settings], tmp_path: Path) -> None:
    desk, _ = decided
    since = datetime(2020, 1, 1, tzinfo=UTC)
    result = export_reviewed(desk.client, desk.db, tmp_path / "ds", since, PRODUCT)
    assert (result.units, result.good, result.defect) == (2, 1, 1)
    assert result.skipped == {"cannot decide (label unknown)": 1}
    ds = load_dataset(tmp_path / "ds")  # the project's dataset format: every row checks
    assert sorted((ds.relative(r), r.label, r.defect) for r in ds.rows) == [
        ("defect/m1__top.jpg", "defect", "chip"), ("good/u2.jpg", "good", "none")]
    with open(tmp_path / "ds" / "labels.csv", encoding="utf-8") as f:
        rows = {r["unit_id"]: r for r in csv.DictReader(f)}
    audit = dict(desk.client.query(
        f"SELECT subject, concat(chain, '#', toString(seq)) FROM {desk.db}.audit_records "
        "WHERE action = 'review.decide'").rows)
    assert rows["u2"]["decided_by"] == "otto" and rows["u2"]["audit_record"] == audit["u2"]
    assert rows["m1"]["decision"] == "defect" and rows["m1"]["station"] == "top" and rows["m1"]["role"] == "qa"
    manifest = json.loads((tmp_path / "ds" / "review_export.json").read_text())
    assert manifest["units"] == 2 and sorted(manifest["decisions"]) == sorted([audit["u2"], audit["m1"]])

    # Where QA confirms, an operator's good is not yet a label.
    strict = export_reviewed(desk.client, desk.db, tmp_path / "strict", since, PRODUCT, qa_confirms=lambda lot: True)
    assert (strict.good, strict.defect) == (0, 1) and strict.skipped["good awaiting QA confirmation"] == 1
    with pytest.raises(ExportError, match="not empty"):
        export_reviewed(desk.client, desk.db, tmp_path / "ds", since, PRODUCT)
    with pytest.raises(ExportError, match="no decided review units"):
        export_reviewed(desk.client, desk.db, tmp_path / "none", datetime(2100, 1, 1, tzinfo=UTC), PRODUCT)

    # Training reads it like any dataset folder and records which decisions it learnt from.
    train, val, info = dataset_sets(tmp_path / "ds", PRODUCT, "supervised", seed=1, val_fraction=0.5)
    assert len(train) + len(val) == 2
    assert info["review_decisions"]["units"] == 2 and info["review_decisions"]["decisions"] == manifest["decisions"]


def test_export_command(decided: tuple[ReviewDesk, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    _, settings = decided
    monkeypatch.setenv("LINESIGHT_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LINESIGHT_CLICKHOUSE__DATABASE", settings.clickhouse.database)
    monkeypatch.delenv("LINESIGHT_CLICKHOUSE__URL", raising=False)
    assert main(["dataset", "export", "--reviewed", "--since", "2020-01-01", "--product", PRODUCT,
                 "--out", str(tmp_path / "cli")]) == 0
    assert "2 images of 2 decided units (1 good, 1 defect)" in capsys.readouterr().out
    assert main(["review", "status", "--lot", LOT]) == 3  # u2 recovered but not sampled
    assert "1 recovered unit(s) not sampled" in capsys.readouterr().out
