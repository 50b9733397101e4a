"""Accuracy and speed of the label inspection: render a batch at the line's defect mix, read and
judge every label directly (no Triton), and compare with the renderer's ground truth.

Printed: detection rate (recall on defective units), false-reject rate (good units rejected),
per-defect recall (right class), read rate on good labels, exactness of the decoded fields
against what was printed, expiry error in days, and throughput of rendering and of reading.

A `duplicate-serial` unit counts as defective only when the serial it repeats was printed on
an earlier *readable* unit of the batch (otherwise it is, in fact, the first of its serial).

    nice -n 10 .venv/bin/python benchmarks/bench_labels.py --units 1000 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.imaging.labels import LABEL_DEFECTS, LABEL_PRODUCTS, sample_label  # noqa: E402
from pipeline.inspections.label import LabelParams, SerialTracker, judge_label, read_label  # noqa: E402

LINE = "line-1"
LOT = "L2611A07"
TODAY = date(2026, 11, 29)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--product", default="carton-label-gs1", choices=sorted(LABEL_PRODUCTS))
    ap.add_argument("--defect-rate", type=float, default=0.5)
    ap.add_argument("--verbose", action="store_true", help="print every unit judged wrongly")
    args = ap.parse_args(argv)
    if args.units < 1:
        ap.error("--units must be >= 1")

    rng = np.random.default_rng(args.seed)
    params = LabelParams(gtin=LABEL_PRODUCTS[args.product].gtin, min_remaining_shelf_life_days=30)
    tracker = SerialTracker()
    printed_readable: set[str] = set()
    render_s = read_s = render_cpu = read_cpu = 0.0
    good = good_rejected = good_read = 0
    defective = detected = 0
    per_defect: Counter[str] = Counter()
    per_defect_hit: Counter[str] = Counter()
    field_total = field_exact = 0
    expiry_err: list[int] = []

    for seq in range(args.units):
        t0, c0 = time.perf_counter(), time.process_time()
        img, defect, truth = sample_label(rng, args.product, args.defect_rate, LOT, seq, TODAY)
        rgb = np.asarray(img)
        t1, c1 = time.perf_counter(), time.process_time()
        m = read_label(rgb, params, today=TODAY)
        j = judge_label(m, params, LOT, TODAY)
        serial = j.flags.get("serial")
        duplicate = serial is not None and tracker.seen(LINE, LOT, serial)
        t2, c2 = time.perf_counter(), time.process_time()
        render_s += t1 - t0
        read_s += t2 - t1
        render_cpu += c1 - c0
        read_cpu += c2 - c1
        verdict, found = j.verdict, j.defect
        if duplicate and verdict == "pass":
            verdict, found = "reject", "duplicate-serial"
        if defect == "duplicate-serial" and truth.serial not in printed_readable:
            defect = None  # the unit it copies was never read: this is the serial's first sighting
        if truth.damage is None:
            printed_readable.add(truth.serial)

        if m.values.get("decoded") and truth.damage is None:
            for key, want in (("gtin", truth.gtin), ("lot", truth.lot), ("serial", truth.serial),
                              ("expiry", truth.expiry.isoformat())):
                field_total += 1
                field_exact += m.values.get(key) == want
            if "expiry" in m.values:
                expiry_err.append(abs((date.fromisoformat(str(m.values["expiry"])) - truth.expiry).days))
        if args.verbose and (found if verdict == "reject" else None) != defect:
            print(f"  seq {seq}: truth {defect} (damage {truth.damage}, subtle {truth.subtle}) "
                  f"-> {verdict} {found}: {'; '.join(j.reasons)}")
        if defect is None:
            good += 1
            good_read += bool(m.values.get("decoded"))
            good_rejected += verdict == "reject"
        else:
            defective += 1
            per_defect[defect] += 1
            detected += verdict == "reject"
            per_defect_hit[defect] += found == defect

    n = args.units
    err = np.asarray(expiry_err or [0])
    print(f"label benchmark: product={args.product} units={n} seed={args.seed} defect_rate={args.defect_rate}")
    print(f"  good units {good}, defective units {defective}")
    print(f"  detection rate (recall on defective): {detected / max(defective, 1):.4f} ({detected}/{defective})")
    print(f"  false-reject rate: {good_rejected / max(good, 1):.4f} ({good_rejected}/{good})")
    print(f"  read rate on good labels: {good_read / max(good, 1):.4f} ({good_read}/{good})")
    for d in LABEL_DEFECTS:
        if per_defect[d]:
            print(f"  recall {d:<17s} {per_defect_hit[d] / per_defect[d]:.4f} ({per_defect_hit[d]}/{per_defect[d]})")
    print(f"  decoded fields equal to the printed ones: {field_exact / max(field_total, 1):.4f} ({field_exact}/{field_total})")
    print(f"  expiry error (days): mean abs {err.mean():.3f}, p95 {np.percentile(err, 95):.1f}, max {err.max()}")
    print(f"  throughput (wall): render {n / render_s:.1f} units/s, read+judge {n / read_s:.1f} units/s")
    print(f"  CPU per unit: render {1000 * render_cpu / n:.1f} ms, read+judge {1000 * read_cpu / n:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
