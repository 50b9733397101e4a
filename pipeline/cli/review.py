"""`linesight review status|decide|sample` and `linesight dataset export --reviewed` (docs/review.md):
the review station's records from a terminal (the dashboard's review page is the person's way),
and decided review units as a dataset folder for the next model."""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pipeline.cli.audit import add_auth_args, gmp_context, read_password
from pipeline.cli.handlers import with_settings
from pipeline.settings import Settings

# Exit status of `review status` when the lot's review refuses its release.
REFUSED_EXIT = 3


def _since(text: str) -> datetime:
    """An ISO date or date-time (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or date-time (2026-12-01, "
                                         "2026-12-01T08:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _desk(ctx):  # noqa: ANN001, ANN202 - a gmp_context Context
    from pipeline.recipes.lookup import review_spec_for
    from pipeline.review.desk import ReviewDesk

    recipes_dir = ctx.settings.stream.recipes_dir
    return ReviewDesk(ctx.client, ctx.settings.clickhouse.database, ctx.trail, ctx.guard,
                      lambda ref: review_spec_for(recipes_dir, ref)[0], ctx.settings.site)


def _password(args: argparse.Namespace) -> str:
    if not args.user:
        raise SystemExit("linesight review: --user is required (the person signing)")
    return read_password(args.password_file, f"password for {args.user}: ")


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with gmp_context(settings) as ctx:
        desk = _desk(ctx)
        summary = desk.lot_summary(args.lot)
        units = [u.to_json(summary.rules.qa_confirms) for u in summary.queue]
    refusals = summary.release_refusals()
    if args.json:
        print(json.dumps({"lot": args.lot, "counts": summary.counts, "review_fraction": summary.review_fraction,
                          "max_review_fraction": summary.max_review_fraction, "release_refusals": refusals,
                          "units": units}, indent=2, default=str))
    else:
        c = summary.counts
        print(f"lot {args.lot}: {summary.review_units} review units of {summary.units} "
              f"({100 * summary.review_fraction:.2f} %, limit {100 * summary.max_review_fraction:.2f} %"
              f"{', ABOVE' if summary.over_limit else ''})")
        print("  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in c.items()))
        if summary.plan is not None:
            print(f"  sample: {summary.plan.describe()}"
                  + (f"; result {summary.sample['defective']} defective, "
                     f"{'accepted' if summary.sample['accepted'] else 'REJECTED'}" if summary.sample else "; not sampled"))
        for u in units:
            print(f"  {u['unit_id']}: {u['status']}")
        print("release: " + ("refused: " + "; ".join(refusals) if refusals else "nothing in the review refuses it"))
    return REFUSED_EXIT if refusals else 0


def cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.auth.guard import Principal

    with gmp_context(settings) as ctx:
        user = ctx.users.get(args.user or "")
        who = Principal(user.username, user.role) if user else Principal(args.user or "", "")
        done = _desk(ctx).decide(who, _password(args), args.lot, args.unit, args.decision, args.defect or "",
                                 0.0, args.reason or "")
    print(f"{args.unit}: {args.decision}{' (' + args.defect + ')' if args.defect else ''} recorded, "
          f"audit record {done.record.record_id}, signed {done.signature.record_id}")
    return 0


def cmd_sample(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.auth.guard import Principal

    with gmp_context(settings) as ctx:
        user = ctx.users.get(args.user or "")
        who = Principal(user.username, user.role) if user else Principal(args.user or "", "")
        done, summary = _desk(ctx).record_sample(who, _password(args), args.lot, args.defective, None,
                                                 args.reason or "")
    print(f"lot {args.lot}: sample {done.record.new_value} ({done.record.detail_dict()['plan']}), "
          f"audit record {done.record.record_id}, signed {done.signature.record_id}")
    refusals = summary.release_refusals()
    print("release: " + ("refused: " + "; ".join(refusals) if refusals else "nothing in the review refuses it"))
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.clickhouse import connect
    from pipeline.recipes.lookup import review_spec_for
    from pipeline.review.export import export_reviewed
    from pipeline.review.lot_rules import lot_recipe

    if not args.reviewed:
        raise SystemExit("linesight dataset export: give --reviewed (decided review units are what it exports)")
    client = connect(settings)
    db = settings.clickhouse.database
    try:
        @functools.cache
        def qa_confirms(lot: str) -> bool:
            return review_spec_for(settings.stream.recipes_dir, lot_recipe(client, db, lot))[0].qa_confirms

        result = export_reviewed(client, db, args.out, args.since, args.product, qa_confirms)
    finally:
        client.close()
    skipped = "; ".join(f"{why}: {n}" for why, n in result.skipped.items()) or "none"
    print(f"wrote {result.out / 'labels.csv'}: {result.rows} images of {result.units} decided units "
          f"({result.good} good, {result.defect} defect); left out: {skipped}")
    return 0


def register(sub: argparse._SubParsersAction, dataset_sub: argparse._SubParsersAction,  # noqa: SLF001
             settings_of: Callable[[argparse.Namespace], Settings]) -> None:
    """Add `review` to the commands and `export` to `dataset`; `settings_of(args)` gives the Settings."""

    run = with_settings(settings_of)

    p = sub.add_parser("review", help="review units a person decides: a lot's status, decisions, the sample of "
                       "recovered units (docs/review.md)")
    rsub = p.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    r = rsub.add_parser("status", help="a lot's review units and whether its review refuses release (exit 3)")
    r.add_argument("--lot", required=True)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run(cmd_status))
    r = rsub.add_parser("decide", help="record one decision on a review unit (e-signed with the password)")
    r.add_argument("--lot", required=True)
    r.add_argument("--unit", required=True)
    r.add_argument("--decision", required=True, choices=["good", "defect", "cannot_decide"])
    r.add_argument("--defect", help="the defect class (with --decision defect)")
    r.add_argument("--reason", help="a comment kept in the audit record")
    add_auth_args(r)
    r.set_defaults(func=run(cmd_decide))
    r = rsub.add_parser("sample", help="record the ISO 2859-1 sample of a lot's recovered units (QA, e-signed)")
    r.add_argument("--lot", required=True)
    r.add_argument("--defective", type=int, required=True, help="defective units found in the sample")
    r.add_argument("--reason", help="a comment kept in the audit record")
    add_auth_args(r)
    r.set_defaults(func=run(cmd_sample))

    e = dataset_sub.add_parser("export", help="decided review units as a dataset folder (docs/review.md)")
    e.add_argument("--reviewed", action="store_true", help="export the units people decided at the review station")
    e.add_argument("--since", type=_since, required=True, help="decisions from this UTC date or date-time on")
    e.add_argument("--product", help="only this product's units")
    e.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    e.set_defaults(func=run(cmd_export))

