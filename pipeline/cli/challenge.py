"""`linesight challenge register|run|status` (docs/validation.md, "Challenge runs")."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.cli.handlers import with_settings
from pipeline.settings import Settings


def cmd_register(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.audit import gmp_context, login
    from pipeline.recipes.activate import recipe_path
    from pipeline.recipes.schema import load_recipe
    from pipeline.validation.challenge import REGISTER_ACTION, register_set

    # The recipe and the folder are checked before anyone is asked for a password.
    recipe = load_recipe(recipe_path(settings, args.recipe), settings.triton.model_repository)
    with gmp_context(settings) as ctx:
        who = login(ctx, args, REGISTER_ACTION, args.set_id or recipe.id)
        entry, record, signature = register_set(settings, ctx.trail, ctx.guard, who, recipe, args.data,
                                                args.reason or "", args.meaning, args.set_id)
    print(f"registered challenge set {entry.id}: {entry.units} units ({entry.defects} defect; classes "
          f"{', '.join(entry.classes)}) at {entry.path}\n  sha256 {entry.sha256}\n  audit record {record.record_id}, "
          f"signed {args.meaning} by {who.username} ({who.role}): {signature.record_id}")
    print(f"\nthe recipe names it with:\n[challenge]\nset = \"{entry.id}\"\nsha256 = \"{entry.sha256}\"\n"
          "max_good_removed = 0\nmax_review_fraction = 0.0")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.audit import gmp_context, login
    from pipeline.validation.challenge import RUN_ACTION, run_challenge

    with gmp_context(settings) as ctx:
        who = login(ctx, args, RUN_ACTION, args.line)
        result = run_challenge(settings, ctx.client, ctx.trail, ctx.guard, who, args.line, args.lot, args.when,
                               meaning=args.meaning, reason=args.reason or "", timeout_s=args.timeout,
                               rate_per_s=args.rate)
    if args.json:
        print(json.dumps({k: v for k, v in result.__dict__.items()}, default=str, indent=2))
    else:
        print(result.to_text())
        print(f"  audit record {result.audit_record}, signed {args.meaning} by {who.username} ({who.role}): "
              f"{result.signature}")
    return 0 if result.passed else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.analytics.challenges import lot_challenges, release_refusals
    from pipeline.clickhouse import connect

    client = connect(settings)
    try:
        challenges = lot_challenges(client, settings.clickhouse.database, args.lot)
    finally:
        client.close()
    for c in challenges:
        r = c.run
        print(f"{c.phase}: " + (f"{'passed' if c.passed else 'FAILED'} on {r['line']} ({r['recipe']}) by {r['user']} "
                                f"at {r['finished_time']}, record {r['audit_record']}" if r else "missing"))
    refusals = release_refusals(challenges)
    if refusals:
        print("release refused: " + "; ".join(refusals), file=sys.stderr)
    return 1 if refusals else 0


def register(sub: argparse._SubParsersAction, settings_of) -> None:  # noqa: ANN001 - argparse internals
    from pipeline.cli.audit import add_model_auth_args

    run = with_settings(settings_of)

    p = sub.add_parser("challenge", help="challenge sets of known units: register one, run it through a live line")
    c = p.add_subparsers(dest="challenge_command", required=True, metavar="ACTION")
    r = c.add_parser("register", help="check a dataset folder against a recipe's defect classes and register it "
                                      "(hash, audited, e-signed)")
    r.add_argument("--recipe", required=True, help="recipe id (RECIPE.toml in the recipes folder)")
    r.add_argument("--data", required=True, type=Path, help="dataset folder (docs/datasets.md)")
    r.add_argument("--set-id", help="id to register the set under (default: the recipe id)")
    r.add_argument("--reason", help="why (required; kept in the audit trail)")
    add_model_auth_args(r)
    r.set_defaults(func=run(cmd_register))
    r = c.add_parser("run", help="send the line's recipe's challenge set through the live line, judge, record "
                                 "and sign (exit 1 when it failed)")
    r.add_argument("--line", required=True)
    r.add_argument("--lot", required=True)
    r.add_argument("--when", required=True, choices=["start", "end"], help="the lot's start or end challenge")
    r.add_argument("--reason", help="note kept with the audit record")
    r.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every unit's verdict and gate "
                                                                "event (default 120)")
    r.add_argument("--rate", type=float, help="units per second sent (default: the simulated line's rate)")
    r.add_argument("--json", action="store_true")
    add_model_auth_args(r)
    r.set_defaults(func=run(cmd_run))
    r = c.add_parser("status", help="a lot's start and end challenge (exit 1 when either blocks its release)")
    r.add_argument("--lot", required=True)
    r.set_defaults(func=run(cmd_status))
