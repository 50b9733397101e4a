"""Training benchmark: `linesight train` on 1,000 images of 160x160 px (issue 3: <= 10 min on 2 cores).

    .venv/bin/python benchmarks/bench_training.py [--count 1000] [--mode supervised] [--data DIR] [--base none]

Renders a dataset folder with the simulator (not timed; skipped with --data), trains into a
temporary copy of the committed model repository exactly as `linesight train --data` does
(split, fit, k-fold calibration, export, parity, version files) and prints the wall time, the
phases and the validation metrics. Not a test: the time depends on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.imaging.generate import generate_dataset  # noqa: E402
from pipeline.model.train import train_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--product", default="tablet-round-white-10mm")
    parser.add_argument("--mode", choices=["supervised", "good-only"], default="supervised")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="an existing dataset folder instead of rendering one")
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--base", default="auto", help="base model to fine-tune: 'auto' (the shipped model "
                        "if `make model` made it), 'none' (from scratch), or an ONNX file / version directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            t = time.perf_counter()
            data = generate_dataset(work / "data", args.count, [args.product], 0.5, seed=1000 + args.seed, size=160)
            print(f"rendered {args.count} images of 160x160 px in {time.perf_counter() - t:.0f} s (not timed)")
        repo = work / "triton_models"
        shutil.copytree(ROOT / "triton_models", repo, ignore=shutil.ignore_patterns("[0-9]*", "__pycache__", ".train-*"))
        for model in ("tablet_inspector", "tablet_preprocess"):
            shutil.copytree(ROOT / "triton_models" / model / "1", repo / model / "1",
                            ignore=shutil.ignore_patterns("__pycache__"))
        print(f"training on {os.cpu_count()} CPU core(s), torch threads 2, mode {args.mode} ...", flush=True)
        t = time.perf_counter()
        result = train_model(repo, args.product, data=data, mode=args.mode, seed=args.seed, folds=args.folds,
                             progress=sys.stderr.isatty(), base=args.base)
        wall = time.perf_counter() - t
        card = json.loads(result.card_path.read_text())
        v = card["validation"]
        print(f"\nwall time: {wall:.0f} s ({wall / 60:.1f} min; target <= 10 min on 2 cores)")
        print("phases (s):", json.dumps(card["timings_s"]))
        base = card["training"].get("base_model")
        print("initialisation:", "from scratch" if base is None else
              f"base {base['model']} version {base['version']} (sha256 {base['sha256'][:12]}), fine-tuned")
        print(f"epochs {card['training']['epochs']}, calibration folds {card['training']['calibration_folds']}, "
              f"train {card['dataset']['train']['count']} / validation {card['dataset']['validation']['count']} images")
        print(f"thresholds review {card['thresholds']['review']:.4g}, reject {card['thresholds']['reject']:.4g} "
              f"({card['threshold_calibration']['on']})")
        print(f"validation: AUROC {v['auroc']:.4f}, detection {100 * v['detection_rate']:.2f} % at false-reject "
              f"{100 * v['false_reject_rate']:.2f} %, review rate {100 * v['review_rate']:.2f} %")
        print("per-class recall:", json.dumps({k: round(r, 4) for k, r in v["per_class_recall"].items()}))
        print(f"parity: max |dSCORE| {card['parity']['max_abs_diff_score']:.2g} (tolerance {card['parity']['tolerance']:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
