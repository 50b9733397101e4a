"""Train the tablet classifier and install it in the Triton model repository.

`train_model` is the whole build step behind `make model` / `linesight train`: it renders a
seeded training and validation set with the simulator (or loads a dataset folder), trains
`TabletNet`, sets the reject threshold on held-out good units for a target false-reject rate,
exports ONNX, proves onnxruntime reproduces torch, and only then writes `model.onnx`, the model
card and the threshold into the repository. Same seed, same model (fixed thread count,
deterministic algorithms).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.dataset import dataset_hash, load_dataset
from pipeline.imaging.products import get_spec
from pipeline.model import triton_repo
from pipeline.model.data import CLASSES, LabelledImages, load_images, render_set, stratified_split
from pipeline.model.evaluate_offline import InspectionMetrics, inspection_metrics, threshold_for_frr
from pipeline.model.export import OPSET, ParityReport, check_parity, export_onnx, onnx_predict
from pipeline.model.fit import TRAIN_THREADS, FitConfig, deterministic_torch, fit, predict
from pipeline.model.net import DEFAULT_WIDTHS
from pipeline.model.preprocess import MODEL_INPUT_SIZE, PIXEL_MEAN, PIXEL_STD

TARGET_FRR = 0.01
DEFAULT_EPOCHS = 14
# Flips/quarter turns averaged inside the served graph (see ServingModel).
SERVING_VIEWS = 8
# Validation images on which torch and onnxruntime must agree (torch with 8 views is slow on CPU).
PARITY_IMAGES = 128
# Rendered training sets are counterfactual pairs (each defective unit next to the same unit
# without its defect) and rich in subtle defects (the hard cases). Validation is as large as the
# training set and three quarters good: the threshold's false-reject rate is only as certain as
# the number of good units it is calibrated on.
TRAIN_SUBTLE_FRACTION = 0.5
VAL_DEFECT_RATE = 0.25
VAL_SUBTLE_FRACTION = 0.33
DATASET_VAL_FRACTION = 0.25


@dataclass(frozen=True)
class TrainResult:
    """Where the model went and how good it is on the validation set."""

    onnx_path: Path
    card_path: Path
    config_path: Path
    product: str
    threshold: float
    validation: InspectionMetrics
    parity: ParityReport
    wall_time_s: float


def _simulated_sets(product: str, train_count: int, seed: int) -> tuple[LabelledImages, LabelledImages, dict[str, Any]]:
    get_spec(product)  # ValueError naming the products the simulator knows
    val_count = max(30, train_count)
    train = render_set(product, train_count, defect_rate=0.5,
                       subtle_fraction=TRAIN_SUBTLE_FRACTION, seed=seed, stream=0, paired=True)
    val = render_set(product, val_count, defect_rate=VAL_DEFECT_RATE,
                     subtle_fraction=VAL_SUBTLE_FRACTION, seed=seed, stream=1)
    info = {
        "source": "simulator",
        "generator": "pipeline.imaging.render_tablet",
        "generator_seed": seed,
        "train": {"count": len(train), "paired": True, "subtle_fraction": TRAIN_SUBTLE_FRACTION,
                  "stream": 0, "sha256": train.content_hash()},
        "validation": {"count": len(val), "defect_rate": VAL_DEFECT_RATE,
                       "subtle_fraction": VAL_SUBTLE_FRACTION, "stream": 1, "sha256": val.content_hash()},
    }
    return train, val, info


def _dataset_sets(data: Path, product: str, seed: int) -> tuple[LabelledImages, LabelledImages, dict[str, Any]]:
    ds = load_dataset(data, product)  # DatasetError lists every bad row
    images = [(ds.relative(r), r.image.read_bytes(), r.defect) for r in ds.rows]
    everything = load_images(images, MODEL_INPUT_SIZE, source=f"dataset {ds.root}")
    train_idx, val_idx = stratified_split(everything.y, DATASET_VAL_FRACTION, seed)
    train, val = everything.subset(train_idx), everything.subset(val_idx)
    if not (val.y == 0).any() or not (val.y != 0).any():
        raise ValueError(f"dataset {ds.root} needs good and defective {product} units to validate on")
    info = {
        "source": "dataset",
        "path": str(ds.root),
        "dataset_sha256": dataset_hash(ds),
        "split_seed": seed,
        "validation_fraction": DATASET_VAL_FRACTION,
        "train": {"count": len(train)},
        "validation": {"count": len(val)},
    }
    return train, val, info


def _class_counts(s: LabelledImages) -> dict[str, int]:
    counts = np.bincount(s.y, minlength=len(CLASSES))
    return {c: int(n) for c, n in zip(CLASSES, counts, strict=True)}


def train_model(
    repo: Path,
    product: str,
    *,
    train_count: int = 1200,
    seed: int = 0,
    epochs: int | None = None,
    progress: bool = True,
    data: Path | None = None,
) -> TrainResult:
    """Train, calibrate, export, parity-check and install the classifier for `product`.

    `repo` is the Triton model repository holding the committed `tablet_classifier/config.pbtxt`.
    With `data`, images come from that dataset folder (split 75/25 by `seed`); otherwise
    `train_count` units are rendered for training and as many again for validation.
    """
    started = time.perf_counter()
    repo = Path(repo)
    config_size = triton_repo.config_input_size(triton_repo.read_config(repo))
    if config_size != MODEL_INPUT_SIZE:
        raise ValueError(
            f"{triton_repo.config_path(repo)} declares INPUT {config_size}x{config_size}, but the "
            f"preprocessing makes {MODEL_INPUT_SIZE}x{MODEL_INPUT_SIZE}"
        )
    if train_count < 2:
        raise ValueError(f"train_count must be >= 2, got {train_count}")
    cfg = FitConfig(epochs=DEFAULT_EPOCHS if epochs is None else epochs, seed=seed)
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")

    timings: dict[str, float] = {}
    if progress:
        print(f"[train] preparing images for {product}", file=sys.stderr, flush=True)
    if data is None:
        train, val, data_info = _simulated_sets(product, train_count, seed)
    else:
        train, val, data_info = _dataset_sets(Path(data), product, seed)
    timings["data_s"] = time.perf_counter() - started
    data_info["train"]["classes"] = _class_counts(train)
    data_info["validation"]["classes"] = _class_counts(val)

    version_dir = triton_repo.version_dir(repo)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_tmp = version_dir / ".model.onnx.tmp"
    try:
        with deterministic_torch():
            t = time.perf_counter()
            net = fit(train, cfg, progress=progress)
            timings["fit_s"] = time.perf_counter() - t
            t = time.perf_counter()
            export_onnx(net, onnx_tmp, MODEL_INPUT_SIZE, SERVING_VIEWS)
            n_parity = min(len(val), PARITY_IMAGES)
            torch_scores, torch_probs = predict(net, val.x[:n_parity], SERVING_VIEWS)
        parity = check_parity(onnx_tmp, val.x[:n_parity], torch_scores, torch_probs)
        timings["export_parity_s"] = time.perf_counter() - t
        # Calibrate on the artifact that will serve: onnxruntime's scores of every validation unit.
        t = time.perf_counter()
        val_scores, _ = onnx_predict(onnx_tmp, val.x)
        threshold = threshold_for_frr(val_scores[~val.is_defect], TARGET_FRR)
        metrics = inspection_metrics(val_scores, val.is_defect, threshold, val.defect_names)
        timings["calibration_s"] = time.perf_counter() - t
        timings["wall_time_s"] = time.perf_counter() - started
        card = _model_card(product, threshold, metrics, parity, data_info, cfg, timings, onnx_tmp, val)
        onnx_path, card_path = triton_repo.install(repo, onnx_tmp, card, threshold, product)
    finally:
        onnx_tmp.unlink(missing_ok=True)
    wall = time.perf_counter() - started
    if progress:
        print(
            f"[train] {product}: threshold {threshold:.4g}, validation detection "
            f"{metrics.detection_rate:.1%} at FRR {metrics.false_reject_rate:.1%} "
            f"(AUROC {metrics.auroc:.4f}), parity max diff {parity.max_abs_diff_score:.2g}, "
            f"{wall:.0f} s -> {onnx_path}",
            file=sys.stderr,
            flush=True,
        )
    return TrainResult(
        onnx_path=onnx_path,
        card_path=card_path,
        config_path=triton_repo.config_path(repo),
        product=product,
        threshold=threshold,
        validation=metrics,
        parity=parity,
        wall_time_s=wall,
    )


def _model_card(
    product: str,
    threshold: float,
    metrics: InspectionMetrics,
    parity: ParityReport,
    data_info: dict[str, Any],
    cfg: FitConfig,
    timings: dict[str, float],
    onnx_file: Path,
    val: LabelledImages,
) -> dict[str, Any]:
    subtle = val.subtle & val.is_defect
    return {
        "model": triton_repo.CLASSIFIER,
        "version": int(triton_repo.VERSION),
        "product": product,
        "classes": list(CLASSES),
        "outputs": {"SCORE": "1 - p(good)", "CLASS_PROBS": "softmax over classes"},
        "test_time_views": SERVING_VIEWS,
        "reject_threshold": threshold,
        "decision_rule": "reject when SCORE > reject_threshold",
        "threshold_calibration": {
            "target_false_reject_rate": TARGET_FRR,
            "on": f"{metrics.n_good} held-out good validation units",
            "false_reject_rate_upper95": metrics.false_reject_rate_upper95,
        },
        "validation": {
            **metrics.as_dict(),
            "subtle_defects": int(subtle.sum()),
        },
        "data": data_info,
        "training": {
            **asdict(cfg),
            "architecture": f"TabletNet widths={list(DEFAULT_WIDTHS)}",
            "input": {"size": MODEL_INPUT_SIZE, "layout": "NCHW RGB float32",
                      "normalisation": f"(pixel/255 - {PIXEL_MEAN}) / {PIXEL_STD}"},
            "augmentation": "flips, quarter turns, whole-pixel shifts <= 4 px, contrast, brightness, colour gain, blur, noise (identical within a counterfactual pair)",
            "threads": TRAIN_THREADS,
            "deterministic": True,
            "torch": torch.__version__,
            **{k: round(v, 1) for k, v in timings.items()},
        },
        "parity": parity.as_dict(),
        "onnx": {"file": triton_repo.ONNX_FILE, "opset": OPSET,
                 "sha256": triton_repo.sha256_file(onnx_file), "bytes": onnx_file.stat().st_size},
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": triton_repo.code_version(),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.model.train`: train one product's model into a model repository."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", default="tablet-round-white-10mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=1200, help="rendered training images")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None, help="dataset folder instead of the simulator")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "triton_models",
                        help="Triton model repository (default: the project's triton_models/)")
    args = parser.parse_args(argv)
    result = train_model(args.out, args.product, train_count=args.count, seed=args.seed,
                         epochs=args.epochs, data=args.data)
    print(result.onnx_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
