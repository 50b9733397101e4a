"""Held-out evaluation of an exported classifier on fresh simulator units.

Renders a set the model never saw (its own seed and stream), runs the ONNX file with
onnxruntime exactly as served (same preprocessing), and reports detection, false rejects and
AUROC at the model's recorded threshold, with subtle defects broken out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.model.data import render_set
from pipeline.model.evaluate_offline import InspectionMetrics, detection_at_frr, inspection_metrics
from pipeline.model.export import onnx_predict

HELDOUT_STREAM = 2


@dataclass(frozen=True)
class HeldoutReport:
    """Metrics at the deployed threshold plus the subtle-defect view and an FRR-capped view."""

    metrics: InspectionMetrics
    subtle_detection_rate: float
    n_subtle: int
    detection_at_frr_2pct: float  # best detection with FRR <= 2 % on this set (oracle threshold)


def evaluate_heldout(
    onnx_path: Path,
    product: str,
    threshold: float,
    *,
    count: int = 2000,
    seed: int = 1000,
    defect_rate: float = 0.4,
    subtle_fraction: float = 0.33,
) -> HeldoutReport:
    """Score `count` fresh units of `product` with the ONNX model and measure the decisions."""
    test = render_set(product, count, defect_rate=defect_rate, subtle_fraction=subtle_fraction,
                      seed=seed, stream=HELDOUT_STREAM)
    scores, _ = onnx_predict(Path(onnx_path), test.x)
    metrics = inspection_metrics(scores, test.is_defect, threshold, test.defect_names)
    subtle = test.subtle & test.is_defect
    det2, _ = detection_at_frr(scores, test.is_defect, 0.02)
    return HeldoutReport(
        metrics=metrics,
        subtle_detection_rate=float((scores[subtle] > threshold).mean()) if subtle.any() else float("nan"),
        n_subtle=int(subtle.sum()),
        detection_at_frr_2pct=det2,
    )
