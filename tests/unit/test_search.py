"""Model choice by validation (issue 14, item 5): the candidate validation prefers is kept, a
candidate that would overrun the budget is skipped with the reason, every one is recorded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.model.data import LabelledImages
from pipeline.model.export import export_onnx, onnx_predict
from pipeline.model.fit import FitConfig, predict
from pipeline.model.net import NetEnsemble, TabletNet
from pipeline.model.search import Candidate, search

A = Candidate("a: base, mean", True, "mean", 1.0)
B = Candidate("b: base, mean+max, 2x", True, "mean+max", 2.0)
C = Candidate("c: scratch, mean+max, 2x", False, "mean+max", 2.0)


def _sets(n_good: int = 20, n_defect: int = 20) -> tuple[LabelledImages, LabelledImages]:
    y = np.array([0] * n_good + [1] * n_defect)
    x = np.zeros((len(y), 3, 16, 16), dtype=np.float32)
    s = LabelledImages(x, y, np.zeros(len(y), dtype=bool), "test", classes=("good", "chip"))
    return s, s


def _scorer(quality: dict[str, float], val: LabelledImages, n_variants: int):
    """Scores whose separation is the candidate's `quality` (share of defects above every good)."""
    def score(net: TabletNet) -> dict[str, np.ndarray]:
        q = quality[getattr(net, "pool", "ensemble")]
        rng = np.random.default_rng(0)
        good = rng.uniform(0.0, 0.5, int((val.y == 0).sum()) + n_variants)
        n_def = int((val.y != 0).sum())
        defect = np.where(np.arange(n_def) < round(q * n_def), 0.9, 0.1)
        s = np.concatenate([good[: int((val.y == 0).sum())], defect, good[int((val.y == 0).sum()):]])
        return {"SCORE": s[:, None].astype(np.float32)}
    return score


def test_the_candidate_validation_prefers_is_kept_and_all_are_recorded() -> None:
    train, val = _sets()
    fits: list[tuple[int, bool, str]] = []

    def fit_one(cfg: FitConfig, from_base: bool) -> TabletNet:
        fits.append((cfg.epochs, from_base, cfg.pool))
        return TabletNet(pool=cfg.pool, num_classes=2)

    out = search([A, B, C], train, val, FitConfig(epochs=5), fit_one,
                 _scorer({"mean": 0.6, "mean+max": 0.9, "ensemble": 0.85}, val, 10),
                 lambda pool: float(np.quantile(pool, 0.99)), 10)
    assert fits == [(5, True, "mean"), (10, True, "mean+max"), (10, False, "mean+max")]
    # B first of the equals; the ensemble of the two best (B + C) was judged and is not better.
    assert [t.status for t in out.tried] == ["fitted", "chosen", "fitted", "fitted"]
    assert out.tried[3].candidate.name.startswith("ensemble of the 2 best: b: ") and "+ c: " in out.tried[3].candidate.name
    assert isinstance(out.net, TabletNet) and out.net.pool == "mean+max" and out.cfg.epochs == 10
    chosen = out.tried[1]
    assert chosen.detection == pytest.approx(0.9) and chosen.false_reject <= 0.05
    assert out.tried[0].as_dict()["validation_detection"] == pytest.approx(0.6)


def test_no_base_and_over_budget_candidates_are_skipped_with_the_reason() -> None:
    train, val = _sets()

    def slow_fit(cfg: FitConfig, from_base: bool) -> TabletNet:
        time.sleep(0.05)  # the search measures its own time per step
        return TabletNet(pool=cfg.pool, num_classes=2)

    out = search([A, B, C], train, val, FitConfig(epochs=1), slow_fit, _scorer({"mean": 0.5, "mean+max": 1.0}, val, 0),
                 lambda pool: float(pool.max()), 0, budget_s=0.08, has_base=False)
    assert out.tried[0].status == "skipped: no base model" and out.tried[1].status == "skipped: no base model"
    assert out.tried[2].status == "chosen"  # the first candidate that can run always runs
    out = search([A, B], train, val, FitConfig(epochs=1), slow_fit, _scorer({"mean": 0.5, "mean+max": 1.0}, val, 0),
                 lambda pool: float(pool.max()), 0, budget_s=0.08)
    assert out.tried[0].status == "chosen" and out.tried[1].status.startswith("skipped: ")
    assert "projected" in out.tried[1].status and "budget" in out.tried[1].status
    with pytest.raises(ValueError, match="no candidate could be trained"):
        search([A], train, val, FitConfig(epochs=1), slow_fit, _scorer({"mean": 1.0}, val, 0),
               lambda pool: float(pool.max()), 0, has_base=False)


def test_an_ensemble_is_kept_when_validation_prefers_it_and_serves_as_one_graph(tmp_path: Path) -> None:
    train, val = _sets()
    out = search([A, B], train, val, FitConfig(epochs=1), lambda cfg, _b: TabletNet(pool=cfg.pool, num_classes=2),
                 _scorer({"mean": 0.6, "mean+max": 0.7, "ensemble": 0.8}, val, 0), lambda pool: float(pool.max()), 0)
    assert [t.status for t in out.tried] == ["fitted", "fitted", "chosen"]
    assert isinstance(out.net, NetEnsemble) and "ensemble of 2 TabletNets" in out.architecture
    # The averaged logits export as one graph that onnxruntime reproduces.
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 16)).astype(np.float32)
    export_onnx(out.net, tmp_path / "e.onnx", (32, 16), views=2, num_classes=2)
    torch_scores, _ = predict(out.net, x, 2, num_classes=2)
    assert np.allclose(onnx_predict(tmp_path / "e.onnx", x)[0], torch_scores, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        NetEnsemble([TabletNet()])
