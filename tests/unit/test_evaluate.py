"""`linesight evaluate`: metrics at the model's own thresholds, the predictions CSV, the
training-overlap warning. A whole evaluation through the real embedded Triton is
tests/e2e/test_evaluate_triton.py."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from pipeline.datasets.folder import NO_DEFECT, Dataset, DatasetError, Row, load_dataset
from pipeline.imaging.generate import generate_dataset
from pipeline.model import repository
from pipeline.settings import Settings
from pipeline.validation.evaluate import (
    EvaluationError,
    Prediction,
    evaluate,
    parse_model_spec,
    training_overlap,
    verdict_metrics,
    write_predictions,
)

PRODUCT = "tablet-round-white-10mm"


def _dataset(tmp_path: Path, labels: list[tuple[str, str]]) -> Dataset:
    rows = tuple(
        Row(tmp_path / f"{i}.png", PRODUCT, label, defect) for i, (label, defect) in enumerate(labels)
    )
    return Dataset(tmp_path, rows)


def test_model_spec_parsing() -> None:
    assert parse_model_spec(None) == (None, None)
    assert parse_model_spec("tablet_inspector") == ("tablet_inspector", None)
    assert parse_model_spec("tablet_classifier:3") == ("tablet_classifier", 3)
    assert parse_model_spec(":2") == (None, 2)
    with pytest.raises(EvaluationError, match="VERSION"):
        parse_model_spec("tablet_classifier:latest")


def test_metrics_count_review_as_removed_and_report_it(tmp_path: Path) -> None:
    ds = _dataset(
        tmp_path,
        [("good", NO_DEFECT)] * 4 + [("defect", "crack"), ("defect", "crack"), ("defect", "chip"), ("defect", "chip")],
    )
    verdicts = ["pass", "pass", "pass", "review", "reject", "review", "reject", "pass"]
    scores = [0.01, 0.02, 0.03, 0.4, 0.9, 0.5, 0.8, 0.2]
    defects = [NO_DEFECT if v == "pass" else "crack" for v in verdicts]
    preds = [Prediction(f"{i}.png", s, v, d, 1, (0.3, 0.6)) for i, (s, v, d) in enumerate(zip(scores, verdicts, defects, strict=True))]
    m = verdict_metrics(ds, preds)
    assert (m["n"], m["n_good"], m["n_defect"]) == (8, 4, 4)
    assert m["false_reject_rate"] == pytest.approx(0.25)  # the good unit in review left the line
    assert m["detection_rate"] == pytest.approx(0.75)
    assert m["defects_auto_rejected"] == pytest.approx(0.5)
    assert m["review_rate"] == pytest.approx(2 / 8)
    assert m["good_in_review"] == 1
    assert m["recall_by_class"] == {"chip": {"n": 2, "recall": 0.5}, "crack": {"n": 2, "recall": 1.0}}
    assert m["confusion"]["good"] == {"pass": 3, "review": 1, "reject": 0}
    assert m["confusion"]["chip"] == {"pass": 1, "review": 0, "reject": 1}
    assert m["defect_class_confusion"] == {"crack": {"crack": 2}, "chip": {"crack": 1}}
    # 0.2 (a missed chip) ranks above every good unit except the one at 0.4: AUROC 15/16.
    assert m["auroc"] == pytest.approx(15 / 16)


def test_predictions_csv_has_the_issue_columns_one_row_per_image(tmp_path: Path) -> None:
    preds = [
        Prediction("a/1.png", 0.123456789, "pass", NO_DEFECT, 2, (0.5, 0.7)),
        Prediction("b/2.png", 0.9, "reject", "chip", 2, (0.5, 0.7)),
    ]
    out = tmp_path / "out" / "pred.csv"
    write_predictions(out, preds)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [["image", "score", "verdict", "defect"], ["a/1.png", "0.123457", "pass", "none"], ["b/2.png", "0.9", "reject", "chip"]]


def test_training_overlap_counts_shared_content_hashes(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "ds", 6, [PRODUCT], 0.5, seed=3, size=64)
    ds = load_dataset(data, PRODUCT)
    version_dir = tmp_path / "repo" / "m" / "4"
    version_dir.mkdir(parents=True)
    shared = [hashlib.sha256(r.image.read_bytes()).hexdigest() for r in ds.rows[:2]]
    (version_dir / repository.TRAINING_HASHES).write_text("\n".join(shared + ["0" * 64]) + "\n")
    assert training_overlap(tmp_path / "repo", "m", 4, ds) == 2
    assert training_overlap(tmp_path / "repo", "m", 5, ds) == 0  # no hash list: nothing to compare


def test_evaluate_refuses_unknown_version_and_empty_product(tmp_path: Path, embedded_settings: Settings) -> None:
    data = generate_dataset(tmp_path / "ds", 4, [PRODUCT], 0.5, seed=2, size=64)
    with pytest.raises(DatasetError, match="no rows for product"):
        evaluate(embedded_settings, data, "tablet-oval-yellow-14mm", tmp_path / "p.csv")
    with pytest.raises(EvaluationError, match="has no version 999"):
        evaluate(embedded_settings, data, PRODUCT, tmp_path / "p.csv", "tablet_classifier:999")
    assert not (tmp_path / "p.csv").exists()
