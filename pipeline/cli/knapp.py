"""`linesight knapp run|simulate`: the Knapp study of the served model against manual inspection
(docs/validation.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.cli.handlers import with_settings
from pipeline.settings import Settings

# Exit status of `knapp run` when the study ran and the machine is not equivalent.
NOT_EQUIVALENT_EXIT = 3


def _range(text: str) -> tuple[float, float]:
    """`MIN:MAX` (or one number: no variation) -> (MIN, MAX)."""
    lo, sep, hi = text.partition(":")
    try:
        a = float(lo)
        b = float(hi) if sep else a
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN:MAX (numbers)") from None
    if a > b:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN is above MAX")
    return a, b


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from pipeline.validation.knapp import Variation, run_study, summary_text

    variation = Variation(max_shift_px=args.max_shift, light=args.light, blur_px=args.blur)
    with tqdm(desc="knapp", unit="img", disable=args.json or not sys.stderr.isatty()) as bar:
        study = run_study(
            settings, args.set, args.manual, args.out, runs=args.runs, product=args.product,
            model_spec=args.model, good_dir=args.good, good_count=args.good_count, seed=args.seed,
            variation=variation, invariance=args.invariance, progress=bar.update,
        )
    for warning in study.warnings:
        print(f"linesight knapp: warning: {warning}", file=sys.stderr)
    print(json.dumps(study.as_dict(), indent=2) if args.json else summary_text(study))
    if not args.json:
        print(f"wrote {args.out / 'knapp.json'}, {args.out / 'knapp.pdf'} and {args.out / 'presentations.csv'}")
    return 0 if study.equivalent else NOT_EQUIVALENT_EXIT


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.validation.knapp import simulate_inputs

    set_dir, manual = simulate_inputs(
        args.out, args.count, args.product, defect_rate=args.defect_rate, subtle_fraction=args.subtle_fraction,
        inspectors=args.inspectors, inspections=args.inspections, seed=args.seed,
    )
    print(f"wrote the qualification set {set_dir} and SYNTHETIC manual results {manual} "
          "(a rehearsal of the study, not an inspection by anyone)")
    return 0


def register(sub: argparse._SubParsersAction, settings_of) -> None:  # noqa: ANN001 - argparse internals
    from pipeline.model.geometry import INVARIANCES
    from pipeline.validation.knapp import DEFAULT_GOOD_COUNT, DEFAULT_RUNS

    run = with_settings(settings_of)

    p = sub.add_parser("knapp", help="Knapp study: the served model's rejection probabilities against manual "
                       "inspection (docs/validation.md)")
    k = p.add_subparsers(dest="knapp_command", required=True, metavar="ACTION")
    c = k.add_parser("run", help="present each unit of a qualification set N times through the served model; "
                     "RZE against the manual results; false-reject test; knapp.json and knapp.pdf "
                     f"(exit {NOT_EQUIVALENT_EXIT} when not equivalent)")
    c.add_argument("--set", type=Path, required=True, metavar="DIR", help="qualification set (dataset folder, "
                   "docs/datasets.md)")
    c.add_argument("--manual", type=Path, required=True, metavar="CSV",
                   help="manual results: unit,inspector,inspections,rejections (docs/validation.md)")
    c.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for knapp.json, knapp.pdf, "
                   "presentations.csv")
    c.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"presentations per unit (default {DEFAULT_RUNS})")
    c.add_argument("--product", help="product of the set (default: the set's only product)")
    c.add_argument("--model", help="NAME[:VERSION] (default: the product's inspection model, live version)")
    c.add_argument("--good", type=Path, metavar="DIR", help="dataset folder whose good units the false-reject "
                   "test presents (default: the set's good units)")
    c.add_argument("--good-count", type=int, default=DEFAULT_GOOD_COUNT,
                   help=f"good presentations of the false-reject test (default {DEFAULT_GOOD_COUNT}; 0: none)")
    c.add_argument("--seed", type=int, default=0, help="seed of the presentation variation")
    c.add_argument("--max-shift", type=int, default=3, metavar="PX", help="position: up to PX per axis (default 3)")
    c.add_argument("--light", type=_range, default=(0.85, 1.15), metavar="MIN:MAX",
                   help="light gain range (default 0.85:1.15)")
    c.add_argument("--blur", type=_range, default=(0.0, 0.8), metavar="MIN:MAX",
                   help="focus: Gaussian blur sigma range in px (default 0:0.8)")
    c.add_argument("--invariance", choices=list(INVARIANCES),
                   help="orientations a presentation may take (default: what the product's classifier declared)")
    c.add_argument("--json", action="store_true", help="print the study as JSON")
    c.set_defaults(func=run(cmd_run))

    c = k.add_parser("simulate", help="rehearsal inputs: a rendered tablet qualification set and SYNTHETIC "
                     "manual results")
    c.add_argument("--out", type=Path, required=True, metavar="DIR", help="writes DIR/set and DIR/manual.csv")
    c.add_argument("--count", type=int, default=100, help="units (default 100)")
    c.add_argument("--product", default="tablet-round-white-10mm")
    c.add_argument("--defect-rate", type=float, default=0.5)
    c.add_argument("--subtle-fraction", type=float, default=0.5, help="share of defects rendered subtle")
    c.add_argument("--inspectors", type=int, default=3)
    c.add_argument("--inspections", type=int, default=DEFAULT_RUNS, help="per inspector and unit")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=run(cmd_simulate))
