"""Benchmark: blister pack inspection accuracy and speed on the rendered line mix (no Triton).

    .venv/bin/python benchmarks/bench_blisters.py [--units 1000] [--seed 0] [--defect-rate 0.5] [--jpeg Q]

Renders --units packs as the line makes them (`sample_blister`: a pack is defective with
--defect-rate, then has 1-2 bad pockets; a third of defective packs are subtle), encodes each
as PNG (or JPEG of quality --jpeg), and runs what the served model and the worker run: decode, `measure_blister`,
`judge_blister` with the product's default recipe. Prints

- packs: detection rate (recall on defective packs), false-reject rate, defect class accuracy;
- pockets: recall and class accuracy per defect class (and per rendered look), false-reject
  rate on good pockets, index correctness (defective packs whose rejected pockets are exactly
  the bad ones);
- measurement error vs the renderer's ground truth: tablet area fraction, pocket centre (px),
  pack angle (deg): mean abs, p95, max;
- throughput: render and decode+measure+judge per pack on one core.
Nothing here is a test; the figures go to the report.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

import numpy as np

from pipeline.imaging.blisters import BLISTER_DEFECTS, sample_blister
from pipeline.inspections.blister import BlisterParams, judge_blister, measure_blister
from pipeline.wire.codec import decode_rgb, encode_jpeg, encode_png


def _err(label: str, values: list[float]) -> str:
    a = np.abs(np.asarray(values, dtype=np.float64))
    if not len(a):
        return f"  {label:34s} n=0"
    return f"  {label:34s} mean {a.mean():.4f}  p95 {np.percentile(a, 95):.4f}  max {a.max():.4f}  (n={len(a)})"


def _rate(hit: int, n: int) -> str:
    return f"{hit / n:7.2%} ({hit}/{n})" if n else "    n/a (0/0)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=1000, help="packs to render and inspect")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--product", default="blister-2x5-round-white")
    ap.add_argument("--defect-rate", type=float, default=0.5)
    ap.add_argument("--subtle-fraction", type=float, default=0.33)
    ap.add_argument("--jpeg", type=int, default=None, metavar="Q", help="send JPEG of quality Q instead of PNG")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    params = BlisterParams()

    packs = Counter[str]()
    pocket_hits: dict[str, Counter[str]] = defaultdict(Counter)  # class -> n / rejected / right class
    look_hits: dict[str, Counter[str]] = defaultdict(Counter)
    area_err: list[float] = []
    centre_err: list[float] = []
    angle_err: list[float] = []
    render_s = inspect_s = 0.0
    failures: list[str] = []
    for _ in range(args.units):
        t0 = time.perf_counter()
        img, defect, truth = sample_blister(rng, args.product, args.defect_rate, args.subtle_fraction)
        data = encode_png(img) if args.jpeg is None else encode_jpeg(img, args.jpeg)
        t1 = time.perf_counter()
        try:
            m = measure_blister(decode_rgb(data), params)
            j = judge_blister(m, params)
        except ValueError as exc:  # the line would fail-safe reject the pack
            failures.append(str(exc))
            continue
        finally:
            t2 = time.perf_counter()
            render_s += t1 - t0
            inspect_s += t2 - t1
        packs["defective" if defect else "good"] += 1
        if defect:
            packs["detected"] += j.verdict != "pass"
            packs["class_right"] += j.defect == defect
            bad = {i for i, p in enumerate(truth["pockets"]) if p}
            packs["index_exact"] += {v.index for v in j.parts if v.verdict != "pass"} == bad
        else:
            packs["false_reject"] += j.verdict != "pass"
        angle_err.append(float(m.values["pack_angle_deg"]) - truth["pack_angle_deg"])
        for part, verdict, cls, look, centre, area in zip(
            m.parts, j.parts, truth["pockets"], truth["looks"], truth["pocket_centres"], truth["tablet_area_frac"],
            strict=True,
        ):
            key = cls or "good"
            rejected = verdict.verdict != "pass"
            for table, k in ((pocket_hits, key), (look_hits, f"{key}/{look}" + ("/subtle" if truth["subtle"] else ""))):
                table[k]["n"] += 1
                table[k]["rejected"] += rejected
                table[k]["right"] += verdict.defect == (cls or "none")
            centre_err.append(float(np.hypot(float(part["cx"]) - centre[0], float(part["cy"]) - centre[1])))
            if look not in ("crumbs", "split"):  # crumbs are dropped on purpose; a split's gap is not material
                area_err.append(float(part["tablet_area_frac"]) - area)

    done = args.units - len(failures)
    print(f"blister benchmark: {args.units} packs of {args.product}, seed {args.seed}, defect rate {args.defect_rate:g}, "
          f"subtle fraction {args.subtle_fraction:g}, " + ("PNG" if args.jpeg is None else f"JPEG q{args.jpeg}"))
    print(f"measurement failures (fail-safe rejects): {len(failures)}" + (f"  e.g. {failures[0]}" if failures else ""))
    print("packs")
    print(f"  detection rate (defective rejected)  {_rate(packs['detected'], packs['defective'])}")
    print(f"  false-reject rate (good rejected)    {_rate(packs['false_reject'], packs['good'])}")
    print(f"  defect class right                   {_rate(packs['class_right'], packs['defective'])}")
    print(f"  bad pocket indices exactly right     {_rate(packs['index_exact'], packs['defective'])}")
    print("pockets")
    all_bad = Counter[str]()
    for cls in BLISTER_DEFECTS:
        c = pocket_hits[cls]
        all_bad.update(c)
        print(f"  {cls:16s} recall {_rate(c['rejected'], c['n'])}   class right {_rate(c['right'], c['n'])}")
    print(f"  {'all defects':16s} recall {_rate(all_bad['rejected'], all_bad['n'])}   class right "
          f"{_rate(all_bad['right'], all_bad['n'])}")
    good = pocket_hits["good"]
    print(f"  false-reject rate (good pockets)     {_rate(good['rejected'], good['n'])}")
    print("pockets by rendered look (recall, class right)")
    for look in sorted(k for k in look_hits if not k.startswith("good")):
        c = look_hits[look]
        print(f"  {look:36s} {_rate(c['rejected'], c['n'])}  {_rate(c['right'], c['n'])}")
    print("measurement error vs ground truth")
    print(_err("tablet area (fraction of pocket)", area_err))
    print(_err("pocket centre (px)", centre_err))
    print(_err("pack angle (deg)", angle_err))
    print("throughput (one core)")
    print(f"  render+encode {1000 * render_s / args.units:.1f} ms/pack; decode+measure+judge "
          f"{1000 * inspect_s / max(args.units, 1):.1f} ms/pack = {args.units / max(inspect_s, 1e-9):.1f} packs/s "
          f"({10 * args.units / max(inspect_s, 1e-9):.0f} pockets/s); {done} measured")


if __name__ == "__main__":
    main()
