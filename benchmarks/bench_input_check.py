"""Input-space check (issue 16, item 5): extra reviews on in-distribution units, catch rate on
out-of-distribution frames, and the check's cost per unit.

    .venv/bin/python benchmarks/bench_input_check.py [--n 2000] [--n-ood 500] [--repository triton_models]

Judges every frame as the worker does, offline: `nothing_to_inspect` (blank, overexposed, dark:
dead-lettered and fail-safe rejected), then the live classifier version's ONNX file
(onnxruntime, the serving preprocessing, the thresholds baked into it) and the input-space check
against that version's reference (the classifier config's `input_space` parameter). A pass
outside the reference becomes review; "caught" is any verdict but pass.

In-distribution: fresh units of the round tablet from the held-out stream of
`pipeline.model.heldout` (`render_set(..., seed=1000, stream=HELDOUT_STREAM)`, 40 % defective, a
third of them subtle), never in training or validation; and the same units under another
session's light, focus and position (`linesight dataset shift` defaults: light x0.8, blur sigma
1 px, shift <= 3 px), which the model is trained to tolerate, and under light x1.15. Out of distribution, claimed to be the
round tablet: the oval tablet (`tablet-oval-yellow-14mm`, same stream), two products of the
independent renderer `benchmarks.heldout` the model never saw (scored biconvex white and oval
pink tablets, 200 px frames scaled to the input), blank frames (a grey level, noise up to 3
levels), the empty belt (a held-out frame's top rows tiled: no unit), white saturated frames,
held-out frames overexposed x3, blurred (Gaussian sigma 1.5 / 3 px) and shifted (10 / 20 / 45 px,
edge pixels repeated). Prints one markdown table. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.heldout.products import PRODUCTS, render_unit  # noqa: E402
from pipeline.datasets.shift import Shift, shift_image  # noqa: E402
from pipeline.model import repository as layout  # noqa: E402
from pipeline.model.data import render_set  # noqa: E402
from pipeline.model.evaluate_offline import clopper_pearson_upper  # noqa: E402
from pipeline.model.export import onnx_outputs  # noqa: E402
from pipeline.model.heldout import HELDOUT_STREAM  # noqa: E402
from pipeline.model.input_space import Reference, check, describe_frame, parse_param, reference  # noqa: E402
from pipeline.model.preprocess import prepare_image, restore_pil  # noqa: E402
from pipeline.wire.codec import encode_png, nothing_to_inspect  # noqa: E402

PRODUCT, OVAL = "tablet-round-white-10mm", "tablet-oval-yellow-14mm"
CLASSIFIER = "tablet_classifier"


def _png(img: Image.Image | np.ndarray) -> bytes:
    return encode_png(img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8)))


def _rendered(product: str, n: int) -> list[Image.Image]:
    s = render_set(product, n, defect_rate=0.4, subtle_fraction=0.33, seed=1000, stream=HELDOUT_STREAM)
    return [restore_pil(x) for x in s.x]


def _shift(img: Image.Image, d: int, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img)
    ang = rng.uniform(0, 2 * np.pi)
    dy, dx = int(round(d * np.sin(ang))), int(round(d * np.cos(ang)))
    p = np.pad(a, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
    y0, x0 = abs(dy) - dy, abs(dx) - dx
    return Image.fromarray(p[y0:y0 + a.shape[0], x0:x0 + a.shape[1]])


def judge(frames: list[bytes], onnx: Path, ref: Reference, version: int) -> dict[str, int]:
    """Counts of how each frame ends: failsafe (nothing to inspect), model reject/review, input
    space (a model pass sent to review), pass."""
    counts = {"n": len(frames), "failsafe": 0, "model": 0, "input_space": 0, "pass": 0, "model_pass": 0,
              "input_space_out": 0}
    todo: list[bytes] = []
    for data in frames:
        if nothing_to_inspect(data):
            counts["failsafe"] += 1
        else:
            todo.append(data)
    if not todo:
        return counts
    out = onnx_outputs(onnx, np.stack([prepare_image(d, ref.input_hw) for d in todo]))
    review = out["THRESHOLDS"][:, 0]
    for data, score, rv in zip(todo, out["SCORE"][:, 0], review, strict=True):
        doubtful = check(ref, describe_frame(data, ref.input_hw), f"{CLASSIFIER} v{version}").doubtful
        counts["input_space_out"] += doubtful
        if score > rv:
            counts["model"] += 1
        elif doubtful:
            counts["model_pass"] += 1
            counts["input_space"] += 1
        else:
            counts["model_pass"] += 1
            counts["pass"] += 1
    return counts


def plant_product(product: str, n_train: int, n_fresh: int, input_hw: tuple[int, int]) -> tuple[int, int, int]:
    """A plant trains on its own product's images: the reference made from `n_train` units of an
    independently rendered product (good and defective, as a training set holds), checked on
    `n_fresh` other good units of it. Every good unit outside the reference would be an extra
    review (an upper bound: the model may reject some anyway)."""
    spec = PRODUCTS[product]
    train_rng = np.random.default_rng(7)
    training = []
    for i in range(n_train):
        defect = spec.defects[i % len(spec.defects)] if i % 3 == 0 else None
        training.append(prepare_image(_png(render_unit(product, np.random.default_rng([7, i]), defect)), input_hw))
    ref = reference(training, input_hw, session_seed=int(train_rng.integers(1 << 31)))
    outside = sum(check(ref, describe_frame(_png(render_unit(product, np.random.default_rng([8, i]), None)), input_hw),
                        product).doubtful for i in range(n_fresh))
    return n_train, n_fresh, outside


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="in-distribution held-out units")
    ap.add_argument("--n-ood", type=int, default=500, help="units per out-of-distribution set")
    ap.add_argument("--repository", type=Path, default=ROOT / "triton_models")
    ap.add_argument("--plant-train", type=int, default=600, help="training units of each independently rendered "
                    "product whose own reference is checked on --n fresh good units")
    args = ap.parse_args(argv)

    config = layout.read_config(args.repository, CLASSIFIER)
    version = layout.live_version(config)
    refs = parse_param(layout.parameter(config, layout.INPUT_SPACE_PARAM))
    if version is None or version not in refs:
        print(f"{CLASSIFIER}: no live version with an input-space reference", file=sys.stderr)
        return 1
    ref, onnx = refs[version], layout.version_dir(args.repository, CLASSIFIER, version) / layout.ONNX_FILE
    m, rng = args.n_ood, np.random.default_rng(0)
    started = time.perf_counter()
    held = _rendered(PRODUCT, args.n)
    base = held[:m]
    sets: dict[str, Callable[[], list[bytes]]] = {
        "oval tablet (tablet-oval-yellow-14mm)": lambda: [_png(i) for i in _rendered(OVAL, m)],
        "scored biconvex white tablet (independent renderer)": lambda: [
            _png(render_unit("heldout-tablet-biconvex-scored-white", np.random.default_rng([5, i]), None))
            for i in range(m)],
        "oval pink tablet (independent renderer)": lambda: [
            _png(render_unit("heldout-tablet-oval-coloured", np.random.default_rng([6, i]), None)) for i in range(m)],
        "blank (one grey level, noise <= 3)": lambda: [
            _png(np.clip(rng.uniform(0, 255) + rng.normal(0, rng.uniform(0, 3), (160, 160, 3)), 0, 255))
            for _ in range(m)],
        "empty belt (no unit)": lambda: [_png(np.tile(np.asarray(i)[:16], (10, 1, 1))) for i in base],
        "saturated (white)": lambda: [_png(np.clip(255 - np.abs(rng.normal(0, 2, (160, 160, 3))), 0, 255))
                                      for _ in range(m)],
        "overexposed x3": lambda: [_png(np.clip(np.asarray(i, dtype=np.float32) * 3, 0, 255)) for i in base],
        "blurred sigma 1.5 px": lambda: [_png(i.filter(ImageFilter.GaussianBlur(1.5))) for i in base],
        "blurred sigma 3 px": lambda: [_png(i.filter(ImageFilter.GaussianBlur(3))) for i in base],
        "shifted 10 px": lambda: [_png(_shift(i, 10, rng)) for i in base],
        "shifted 20 px": lambda: [_png(_shift(i, 20, rng)) for i in base],
        "shifted 45 px": lambda: [_png(_shift(i, 45, rng)) for i in base],
    }
    print(f"{CLASSIFIER} v{version}, reference of {ref.n_images} training images; {args.repository}\n")
    held_png = [_png(i) for i in held]
    c = judge(held_png, onnx, ref, version)
    extra = c["input_space"] / c["n"]
    print("| set | n | model pass | extra reviews (input space) | 95 % upper bound |\n|---|---|---|---|---|")
    print(f"| in-distribution held-out round tablets (good and defective) | {c['n']} | {c['model_pass']} | "
          f"{c['input_space']} ({extra:.2%}) | {clopper_pearson_upper(c['input_space'], c['n']):.2%} |")
    session = np.random.default_rng(1)
    c = judge([_png(shift_image(i, Shift(), session)) for i in held], onnx, ref, version)
    print(f"| the same under another session (light x0.8, blur 1 px, shift <= 3 px) | {c['n']} | "
          f"{c['model_pass']} | {c['input_space']} ({c['input_space'] / c['n']:.2%}) | "
          f"{clopper_pearson_upper(c['input_space'], c['n']):.2%} |")
    c = judge([_png(np.clip(np.asarray(i, dtype=np.float32) * 1.15, 0, 255)) for i in held], onnx, ref, version)
    print(f"| the same under light x1.15 (white tablets start to clip) | {c['n']} | {c['model_pass']} | "
          f"{c['input_space']} ({c['input_space'] / c['n']:.2%}) | "
          f"{clopper_pearson_upper(c['input_space'], c['n']):.2%} |\n")
    print("| out-of-distribution set | n | fail-safe reject (nothing to inspect) | model review/reject | "
          "input space (pass -> review) | caught | input space out (any verdict) |\n|---|---|---|---|---|---|---|")
    for name, make in sets.items():
        c = judge(make(), onnx, ref, version)
        caught = c["n"] - c["pass"]
        print(f"| {name} | {c['n']} | {c['failsafe']} | {c['model']} | {c['input_space']} | "
              f"**{caught / c['n']:.1%}** | {c['input_space_out']} |", flush=True)
    print("\n| a plant's own product (independent renderer): reference from its training images | "
          "training units | fresh good units | outside the reference | 95 % upper bound |\n|---|---|---|---|---|")
    for product in ("heldout-tablet-biconvex-scored-white", "heldout-tablet-oval-coloured"):
        own, fresh, outside = plant_product(product, args.plant_train, args.n, ref.input_hw)
        print(f"| {product} | {own} | {fresh} | {outside} ({outside / fresh:.2%}) | "
              f"{clopper_pearson_upper(outside, fresh):.2%} |", flush=True)
    t = time.perf_counter()
    for data in held_png[:500]:
        describe_frame(data, ref.input_hw)
    per_unit = (time.perf_counter() - t) / min(500, len(held_png)) * 1000
    print(f"\ncheck cost: {per_unit:.2f} ms per unit (decode + prepare + descriptors, one core); "
          f"whole run {time.perf_counter() - started:.0f} s")
    return 0 if math.isfinite(per_unit) else 1


if __name__ == "__main__":
    raise SystemExit(main())
