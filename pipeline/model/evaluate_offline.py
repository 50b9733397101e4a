"""Inspection metrics from scores and labels (numpy only, no sklearn).

Conventions used everywhere in LineSight: a score is 1 - p(good), higher means more likely
defective, and a unit is rejected when `score > threshold`. Thresholds are placed half-way
between two observed good scores, so `>=` and `>` give the same decisions on the calibration set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class InspectionMetrics:
    """Decision quality at one threshold, plus the threshold-free AUROC."""

    threshold: float
    n_good: int
    n_defect: int
    false_rejects: int
    detected: int
    false_reject_rate: float
    false_reject_rate_upper95: float  # one-sided 95 % Clopper-Pearson bound
    detection_rate: float
    detection_rate_lower95: float
    auroc: float
    detection_by_class: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _check(scores: np.ndarray, is_defect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_defect = np.asarray(is_defect, dtype=bool).ravel()
    if scores.shape != is_defect.shape:
        raise ValueError(f"{scores.size} scores but {is_defect.size} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    return scores, is_defect


def auroc(scores: Sequence[float] | np.ndarray, is_defect: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve: P(score of a defect > score of a good unit), ties count half."""
    scores, is_defect = _check(np.asarray(scores), np.asarray(is_defect))
    n_pos, n_neg = int(is_defect.sum()), int((~is_defect).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both good and defective units")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_ranks = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = mid_ranks[inverse]
    u = ranks[is_defect].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def threshold_for_frr(good_scores: Sequence[float] | np.ndarray, target_frr: float) -> float:
    """Threshold that rejects at most `target_frr` of these good units (`score > threshold`).

    With n good scores, floor(target * n) of them may lie above; the threshold sits half-way
    between the last allowed one and the next. A small n cannot resolve a small target: see
    `clopper_pearson_upper` for what the calibration set can actually confirm.
    """
    if not 0.0 <= target_frr < 1.0:
        raise ValueError(f"target false-reject rate must be in [0, 1), got {target_frr}")
    s = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if s.size == 0:
        raise ValueError("no good scores to calibrate on")
    k = int(math.floor(target_frr * s.size + 1e-9))
    upper = 1.0 if k == 0 else float(s[k - 1])
    lower = float(s[k]) if k < s.size else 0.0
    return 0.5 * (upper + lower)


def _binom_cdf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(1.0, sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
        for i in range(k + 1)
    ))


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a rate seen as k events in n trials."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _binom_cdf(k, n, mid) > 1.0 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def detection_at_frr(scores: np.ndarray, is_defect: np.ndarray, max_frr: float) -> tuple[float, float]:
    """Best detection rate on this set with FRR <= max_frr, and that threshold (oracle view)."""
    scores, is_defect = _check(scores, is_defect)
    t = threshold_for_frr(scores[~is_defect], max_frr)
    return float((scores[is_defect] > t).mean()) if is_defect.any() else float("nan"), t


def inspection_metrics(
    scores: Sequence[float] | np.ndarray,
    is_defect: Sequence[bool] | np.ndarray,
    threshold: float,
    defect_classes: Sequence[str] | np.ndarray | None = None,
) -> InspectionMetrics:
    """Detection rate, false-reject rate (with confidence bounds), AUROC and per-class detection."""
    scores, is_defect = _check(np.asarray(scores), np.asarray(is_defect))
    rejected = scores > threshold
    n_good, n_defect = int((~is_defect).sum()), int(is_defect.sum())
    fr, det = int(rejected[~is_defect].sum()), int(rejected[is_defect].sum())
    by_class: dict[str, float] = {}
    if defect_classes is not None:
        names = np.asarray(defect_classes, dtype=object).ravel()
        if names.size != scores.size:
            raise ValueError(f"{names.size} defect class names for {scores.size} scores")
        for name in sorted({str(n) for n in names[is_defect]}):
            sel = is_defect & (names == name)
            by_class[name] = float(rejected[sel].mean())
    return InspectionMetrics(
        threshold=float(threshold),
        n_good=n_good,
        n_defect=n_defect,
        false_rejects=fr,
        detected=det,
        false_reject_rate=fr / n_good if n_good else float("nan"),
        false_reject_rate_upper95=clopper_pearson_upper(fr, n_good),
        detection_rate=det / n_defect if n_defect else float("nan"),
        detection_rate_lower95=1.0 - clopper_pearson_upper(n_defect - det, n_defect) if n_defect else float("nan"),
        auroc=auroc(scores, is_defect) if n_good and n_defect else float("nan"),
        detection_by_class=by_class,
    )
