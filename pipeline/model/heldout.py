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


def evaluate_folder(onnx_path: Path, data: Path, product: str) -> dict[str, object]:
    """Score a dataset folder's rows of `product` with an ONNX classifier version (onnxruntime,
    the serving preprocessing) and judge them with the thresholds baked into that artifact.

    Offline counterpart of `linesight evaluate` (which goes through Triton): detection and
    false-reject rate of the gate (review + reject), review rate, AUROC, per-class recall.
    """
    from pipeline.datasets.folder import load_dataset
    from pipeline.model.data import load_images, supervised_classes
    from pipeline.model.export import input_geometry, onnx_outputs

    ds = load_dataset(data, product)
    images = [(ds.relative(r), r.image.read_bytes(), r.defect) for r in ds.rows]
    s = load_images(images, input_geometry(Path(onnx_path)), classes=supervised_classes([r.defect for r in ds.rows]))
    out = onnx_outputs(Path(onnx_path), s.x)
    scores = out["SCORE"][:, 0]
    review, reject = (float(v) for v in out["THRESHOLDS"][0])
    is_defect = s.y != 0
    m = inspection_metrics(scores, is_defect, review, s.defect_names)
    det2, _ = detection_at_frr(scores, is_defect, 0.02)
    det1, _ = detection_at_frr(scores, is_defect, 0.01)
    verdict_review = (scores > review) & (scores <= reject)
    return {
        "data": str(ds.root),
        "product": product,
        "model_version": int(out["MODEL_VERSION"][0, 0]),
        "thresholds": [review, reject],
        "n_good": m.n_good,
        "n_defect": m.n_defect,
        "auroc": m.auroc,
        "detection_rate": m.detection_rate,
        "detection_rate_lower95": m.detection_rate_lower95,
        "false_reject_rate": m.false_reject_rate,
        "false_reject_rate_upper95": m.false_reject_rate_upper95,
        "review_rate": float(verdict_review.mean()),
        "good_in_review": int((verdict_review & ~is_defect).sum()),
        "good_rejected_outright": int(((scores > reject) & ~is_defect).sum()),
        "defects_passed": int(((scores <= review) & is_defect).sum()),
        "per_class_recall": m.detection_by_class,
        "oracle_detection_at_frr_1pct": det1,
        "oracle_detection_at_frr_2pct": det2,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.model.heldout MODEL.onnx DATA PRODUCT [DATA ...]`: JSON metrics per folder."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="held-out metrics of an ONNX classifier version on dataset folders")
    parser.add_argument("onnx", type=Path)
    parser.add_argument("product")
    parser.add_argument("data", type=Path, nargs="+")
    args = parser.parse_args(argv)
    for d in args.data:
        print(json.dumps(evaluate_folder(args.onnx, d, args.product)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
