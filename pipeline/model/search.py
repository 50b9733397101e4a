"""Model choice by validation: try what is worth trying within a time budget, keep the best.

No one recipe wins on every product: fine-tuning the shipped base transfers what it learnt
about defects on tablets, a network trained from scratch owes nothing to tablets, max pooling
keeps a 1 px particle from being averaged away, a longer schedule helps a product far from the
base. So a dataset training fits candidates in order of expected worth, each judged on the
validation split exactly as the release gate will judge the version (detection of the gate at
thresholds calibrated on that candidate's own good scores, then its false rejects, then AUROC), skips a candidate whose
projected time would overrun the budget, keeps the best and records the comparison in the model
card. The choice is made on the validation split the gate then reads, a mild optimism (a few
candidates, not a sweep) that the model card states.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.model.data import LabelledImages
from pipeline.model.evaluate_offline import inspection_metrics
from pipeline.model.fit import FitConfig, steps_per_epoch
from pipeline.model.net import Classifier, NetEnsemble, TabletNet

# Whole search (every candidate's fit and validation scoring) on 2 cores: the budget
# for 600 images is 15 minutes, of which data loading, calibration, export and parity take ~2.
SEARCH_BUDGET_S = 13 * 60.0


@dataclass(frozen=True)
class Candidate:
    """One way to train the product's classifier."""

    name: str
    from_base: bool  # start from the shipped base model's weights (else from scratch)
    pool: str  # TabletNet pooling
    epochs_factor: float = 1.0  # times the dataset's step-sized epoch count

    def config(self, cfg: FitConfig) -> FitConfig:
        return replace(cfg, pool=self.pool, epochs=max(1, round(cfg.epochs * self.epochs_factor)))


# In order of expected worth (measured on held-out products, docs/models.md).
# The first is the cheapest that is known to be good, so that a large product still gets a
# version within the budget.
DATASET_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("fine-tune base, mean pooling", True, "mean", 1.0),
    Candidate("fine-tune base, mean pooling, 2x epochs", True, "mean", 2.0),
    Candidate("fine-tune base, mean+max pooling, 2x epochs", True, "mean+max", 2.0),
    Candidate("from scratch, mean+max pooling, 2x epochs", False, "mean+max", 2.0),
)


@dataclass
class Tried:
    """What one candidate did on the validation split (or why it was not fitted)."""

    candidate: Candidate
    status: str  # "chosen", "fitted", or "skipped: <why>"
    epochs: int = 0
    seconds: float = 0.0
    auroc: float = float("nan")
    detection: float = float("nan")  # gate (review + reject) at its own calibrated review threshold
    false_reject: float = float("nan")
    review_threshold: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if np.isnan(v) else round(float(v), 6)

        return {"candidate": self.candidate.name, "from_base": self.candidate.from_base,
                "pool": self.candidate.pool, "epochs": self.epochs, "status": self.status,
                "seconds": round(self.seconds, 1), "validation_auroc": num(self.auroc),
                "validation_detection": num(self.detection), "validation_false_reject": num(self.false_reject),
                "review_threshold": num(self.review_threshold)}

    @property
    def key(self) -> tuple[float, float, float]:
        return (self.detection, -self.false_reject, self.auroc)


@dataclass(frozen=True)
class Fitted:
    """The chosen network, its validation-and-variants scores, and the whole comparison."""

    net: Classifier
    cfg: FitConfig  # the chosen network's (an ensemble's: its best member's)
    scored: dict[str, np.ndarray]
    tried: list[Tried]
    seconds: float

    @property
    def architecture(self) -> str:
        if isinstance(self.net, NetEnsemble):
            return (f"ensemble of {len(self.net.nets)} TabletNets (logits averaged): "
                    + ", ".join(f"{n.pool} pooling" for n in self.net.nets if isinstance(n, TabletNet)))
        return f"TabletNet, {self.cfg.pool} pooling"


def search(
    candidates: tuple[Candidate, ...] | list[Candidate],
    train: LabelledImages,
    val: LabelledImages,
    cfg: FitConfig,
    fit_one: Callable[[FitConfig, bool], TabletNet],
    score: Callable[[Classifier], dict[str, np.ndarray]],
    review_threshold: Callable[[np.ndarray], float],
    n_variant_scores: int,
    budget_s: float = SEARCH_BUDGET_S,
    has_base: bool = True,
    log: Callable[[str], None] = lambda _m: None,
) -> Fitted:
    """Fit each candidate that fits the budget and keep the one validation prefers.

    `fit_one(cfg, from_base)` trains a network; `score(net)` gives its scoring-graph outputs on
    the validation images followed by `n_variant_scores` nuisance variants of the good ones;
    `review_threshold(good_scores)` is the training's own calibration. The first candidate that
    can run always runs; a later one is skipped when the time per optimiser step measured so far
    says it would end past `budget_s`. With two or more fitted, the two best averaged (a small
    ensemble, twice the inference cost) are judged the same way and kept only when better.
    """
    started = time.perf_counter()
    tried: list[Tried] = []
    best: tuple[Tried, Classifier, FitConfig, dict[str, np.ndarray]] | None = None
    fitted: list[tuple[Tried, TabletNet, FitConfig]] = []
    per_step_s: float | None = None
    for cand in candidates:
        c_cfg = cand.config(cfg)
        if cand.from_base and not has_base:
            tried.append(Tried(cand, "skipped: no base model", c_cfg.epochs))
            continue
        steps = c_cfg.epochs * steps_per_epoch(train, c_cfg)
        elapsed = time.perf_counter() - started
        if best is not None and per_step_s is not None and elapsed + per_step_s * steps > budget_s:
            tried.append(Tried(cand, f"skipped: {per_step_s * steps:.0f} s projected, {budget_s - elapsed:.0f} s "
                                     f"of the {budget_s:.0f} s budget left", c_cfg.epochs))
            log(f"candidate '{cand.name}': {tried[-1].status}")
            continue
        t = time.perf_counter()
        log(f"candidate '{cand.name}': {c_cfg.epochs} epochs")
        net = fit_one(c_cfg, cand.from_base)
        scored = score(net)
        seconds = time.perf_counter() - t
        per_step_s = seconds / max(1, steps)  # scoring included: it scales with the candidate too
        tr = _judge(cand, c_cfg.epochs, seconds, scored, val, n_variant_scores, review_threshold)
        tried.append(tr)
        fitted.append((tr, net, c_cfg))
        log(_report(tr))
        if best is None or _better(tr, best[0]):
            best = (tr, net, c_cfg, scored)
    if best is None:
        raise ValueError("no candidate could be trained: " + "; ".join(f"{t.candidate.name}: {t.status}" for t in tried))
    if len(fitted) >= 2:
        ranked = sorted(fitted, key=lambda f: _rank(f[0]), reverse=True)[:2]
        t = time.perf_counter()
        ens = NetEnsemble([ranked[0][1], ranked[1][1]])
        cand = Candidate(f"ensemble of the 2 best: {ranked[0][0].candidate.name} + {ranked[1][0].candidate.name}",
                         ranked[0][0].candidate.from_base or ranked[1][0].candidate.from_base,
                         f"{ranked[0][2].pool} + {ranked[1][2].pool}")
        scored = score(ens)
        tr = _judge(cand, ranked[0][2].epochs + ranked[1][2].epochs, time.perf_counter() - t, scored, val,
                    n_variant_scores, review_threshold)
        tried.append(tr)
        log(_report(tr))
        if _better(tr, best[0]):
            best = (tr, ens, ranked[0][2], scored)
    best[0].status = "chosen"
    return Fitted(best[1], best[2], best[3], tried, time.perf_counter() - started)


def _judge(cand: Candidate, epochs: int, seconds: float, scored: dict[str, np.ndarray], val: LabelledImages,
           n_variant_scores: int, review_threshold: Callable[[np.ndarray], float]) -> Tried:
    """A fitted candidate's validation figures at its own calibrated review threshold."""
    is_defect = val.y != 0
    s = scored["SCORE"][:, 0]
    val_s = s[: len(val)]
    review = review_threshold(np.concatenate([val_s[~is_defect], s[len(val): len(val) + n_variant_scores]]))
    m = inspection_metrics(val_s, is_defect, review)
    return Tried(cand, "fitted", epochs, seconds, m.auroc, m.detection_rate, m.false_reject_rate, review)


def _report(tr: Tried) -> str:
    return (f"candidate '{tr.candidate.name}': validation detection {100 * tr.detection:.2f} % at false-reject "
            f"{100 * tr.false_reject:.2f} %, AUROC {tr.auroc:.4f}, {tr.seconds:.0f} s")


def _rank(t: Tried) -> tuple[float, ...]:
    """Higher gate detection; at equal detection, fewer false rejects, then higher AUROC (nan
    counts as worst)."""
    return tuple(-2.0 if np.isnan(v) else v for v in t.key)


def _better(a: Tried, b: Tried) -> bool:
    return _rank(a) > _rank(b)
