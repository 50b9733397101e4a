"""Accuracy of the vial inspection on rendered line output (no Triton: measure + judge directly).

Renders N vials at the line's defect mix (about half defective, a third of the defects subtle),
measures every frame from its PNG bytes as the Triton model does, judges it with the product's
recipe and prints: detection rate (recall on defective units), false-reject rate, per-defect
recall (rejected / rejected with the right class), fill-level error against the renderer's
truth (mean abs, p95, max; all units and the subtle low/high fills) and measure throughput.

    nice -n 10 .venv/bin/python benchmarks/bench_vials.py --units 1000 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.imaging.vials import VIAL_DEFECTS, VIAL_PRODUCTS, sample_vial  # noqa: E402
from pipeline.inspections.vial import default_params, judge_vial, measure_vial  # noqa: E402
from pipeline.wire.codec import decode_rgb, encode_png  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--product", default="vial-2r-clear-5ml", choices=sorted(VIAL_PRODUCTS))
    ap.add_argument("--defect-rate", type=float, default=0.5)
    args = ap.parse_args(argv)

    spec = VIAL_PRODUCTS[args.product]
    params = default_params(spec)
    rng = np.random.default_rng(args.seed)
    caught, right, total = Counter(), Counter(), Counter()
    false_rejects = goods = 0
    errors: list[float] = []
    subtle_fill_errors: list[float] = []
    measure_s = 0.0
    failures: list[str] = []
    for i in range(args.units):
        img, defect, truth = sample_vial(rng, args.product, args.defect_rate)
        data = encode_png(img)
        t0 = time.perf_counter()
        m = measure_vial(decode_rgb(data), params)
        measure_s += time.perf_counter() - t0
        j = judge_vial(m, params)
        err = float(m.values["fill_mm"]) - float(truth["fill_mm"])  # type: ignore[arg-type]
        errors.append(err)
        if defect in ("low-fill", "high-fill") and truth["subtle"]:
            subtle_fill_errors.append(err)
        if defect is None:
            goods += 1
            if j.verdict != "pass":
                false_rejects += 1
                failures.append(f"unit {i}: good unit rejected as {j.defect}: {'; '.join(j.reasons)}")
            continue
        total[defect] += 1
        if j.verdict == "reject":
            caught[defect] += 1
            right[defect] += j.defect == defect
        else:
            failures.append(f"unit {i}: {defect}{' (subtle)' if truth['subtle'] else ''} passed, truth {truth}")

    n_bad = sum(total.values())
    print(f"product {args.product}, {args.units} units (seed {args.seed}), {n_bad} defective, {goods} good")
    print(f"detection rate (recall on defective): {sum(caught.values()) / max(n_bad, 1):.2%}")
    print(f"false-reject rate (good units rejected): {false_rejects / max(goods, 1):.2%}")
    for d in VIAL_DEFECTS:
        n = total[d]
        print(f"  {d:16s} n={n:4d}  recall {caught[d] / max(n, 1):7.2%}  right class {right[d] / max(n, 1):7.2%}")
    for name, errs in (("all units", errors), ("subtle low/high fills", subtle_fill_errors)):
        a = np.abs(np.asarray(errs))
        if len(a):
            print(
                f"fill error [{name}, n={len(a)}]: mean abs {a.mean():.3f} mm, p95 {np.percentile(a, 95):.3f} mm, "
                f"max {a.max():.3f} mm, bias {np.mean(errs):+.3f} mm (tolerance {params.fill_tolerance_mm} mm)"
            )
    print(f"measure throughput (PNG decode + measure, 1 core): {args.units / measure_s:.1f} frames/s")
    for line in failures[:10]:
        print("  miss:", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
