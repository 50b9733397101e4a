"""Per-unit CPU cost of the measurement kernels (vial, blister, label) and a digest of what they measured.

    nice -n 10 .venv/bin/python benchmarks/bench_kernels.py --units 200 --seed 0 [--kind vial] [--repeat 5]

Renders --units frames per kind at the line's defect mix (the accuracy benchmarks' samplers),
PNG-encodes and decodes each as the worker and Triton do (outside the timing), then times the
function the Triton model runs per frame (`measure_vial`, `measure_blister`, `read_label_frame`)
in this process: each unit's cost is the median over --repeat runs of its CPU time
(`time.process_time`, all of this process's threads), so other processes' load on the machine
moves it little. Printed per kind: median, p90 and mean CPU ms per unit and the wall median.

The digest is the SHA-256 of every unit's measurement JSON (or its error) in order: the same
digest before and after a change of kernel means the same measurements, bit for bit, on that set.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.imaging.blisters import sample_blister  # noqa: E402
from pipeline.imaging.labels import LABEL_PRODUCTS, sample_label  # noqa: E402
from pipeline.imaging.vials import VIAL_PRODUCTS, sample_vial  # noqa: E402
from pipeline.inspections.base import Measurement  # noqa: E402
from pipeline.inspections.blister import BlisterParams, measure_blister  # noqa: E402
from pipeline.inspections.label import LabelParams, read_label_frame  # noqa: E402
from pipeline.inspections.vial import default_params, measure_vial  # noqa: E402
from pipeline.wire.codec import decode_rgb, encode_png  # noqa: E402

KINDS = ("vial", "blister", "label")
TODAY = date(2026, 11, 29)


def _frames(kind: str, units: int, seed: int) -> tuple[list[np.ndarray], Callable[[np.ndarray], Measurement]]:
    """Decoded frames of `units` rendered units and the per-frame function the Triton model runs."""
    rng = np.random.default_rng(seed)
    frames: list[np.ndarray] = []
    if kind == "vial":
        product = "vial-2r-clear-5ml"
        vp = default_params(VIAL_PRODUCTS[product])
        for _ in range(units):
            frames.append(decode_rgb(encode_png(sample_vial(rng, product, 0.5)[0])))
        return frames, lambda rgb: measure_vial(rgb, vp)
    if kind == "blister":
        bp = BlisterParams()
        for _ in range(units):
            frames.append(decode_rgb(encode_png(sample_blister(rng, "blister-2x5-round-white", 0.5)[0])))
        return frames, lambda rgb: measure_blister(rgb, bp)
    product = "carton-label-gs1"
    lp = LabelParams(gtin=LABEL_PRODUCTS[product].gtin, min_remaining_shelf_life_days=30)
    for seq in range(units):
        frames.append(decode_rgb(encode_png(sample_label(rng, product, 0.5, "L2611A07", seq, TODAY)[0])))
    return frames, lambda rgb: read_label_frame(rgb, lp, today=TODAY)


def run(kind: str, units: int, seed: int, repeat: int) -> dict[str, float | str | int]:
    frames, measure = _frames(kind, units, seed)
    digest = hashlib.sha256()
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    errors = 0
    for rgb in frames:
        cpu, wall = [], []
        out = b""
        for _ in range(repeat):
            c0, t0 = time.process_time(), time.perf_counter()
            try:
                out = measure(rgb).to_json()
            except ValueError as exc:  # the line fail-safe rejects such a frame; it costs all the same
                out = f"error: {exc}".encode()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
        errors += out.startswith(b"error: ")
        digest.update(out + b"\n")
        cpu_ms.append(1000.0 * float(np.median(cpu)))
        wall_ms.append(1000.0 * float(np.median(wall)))
    c = np.asarray(cpu_ms)
    return {
        "kind": kind,
        "units": units,
        "errors": errors,
        "cpu_median_ms": float(np.median(c)),
        "cpu_p90_ms": float(np.percentile(c, 90)),
        "cpu_mean_ms": float(c.mean()),
        "wall_median_ms": float(np.median(wall_ms)),
        "digest": digest.hexdigest()[:16],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=[*KINDS, "all"], default="all")
    ap.add_argument("--units", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5, help="runs per unit; its median CPU time is the unit's cost")
    args = ap.parse_args(argv)
    if args.units < 1 or args.repeat < 1:
        ap.error("--units and --repeat must be >= 1")
    for kind in KINDS if args.kind == "all" else (args.kind,):
        r = run(kind, args.units, args.seed, args.repeat)
        print(
            f"{kind:8s} units {r['units']} (errors {r['errors']}): CPU per unit median {r['cpu_median_ms']:.2f} ms, "
            f"p90 {r['cpu_p90_ms']:.2f} ms, mean {r['cpu_mean_ms']:.2f} ms; wall median {r['wall_median_ms']:.2f} ms; "
            f"measurement digest {r['digest']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
