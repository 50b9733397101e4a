"""`linesight recipes list|validate|active|activate` (docs/recipes.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli.handlers import with_settings
from pipeline.recipes.schema import Recipe, RecipeError, load_recipe
from pipeline.settings import Settings


def _row(path: Path, r: Recipe | RecipeError) -> dict:
    if isinstance(r, Recipe):
        return {"file": str(path), "recipe": r.ref, "product": r.product, "sha256": r.sha256,
                "inspections": [f"{s.name}:{s.kind}:{s.model}" for s in r.inspections], "valid": True}
    return {"file": str(path), "valid": False, "problems": r.problems}


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.recipes.activate import list_recipes

    rows = [_row(p, r) for p, r in list_recipes(settings)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if row["valid"]:
                print(f"{row['recipe']:<32} {row['product']:<28} {row['sha256'][:12]}  {', '.join(row['inspections'])}")
            else:
                print(f"INVALID {row['file']}: " + "; ".join(row["problems"]))
    return 0 if all(r["valid"] for r in rows) else 1


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    bad = 0
    for path in args.files:
        try:
            r = load_recipe(path, settings.triton.model_repository)
            print(f"ok {path}: {r.ref} ({r.product}), sha256 {r.sha256}")
        except RecipeError as exc:
            bad += 1
            print(f"REFUSED {path}:")
            for problem in exc.problems:
                print(f"  - {problem}")
    return 1 if bad else 0


def cmd_active(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.recipes.activate import current_recipes

    lines = {line: f"{rid} (start recipe)" for line, rid in settings.stream.line_recipes.items()}
    lines |= current_recipes(settings)
    for line, ref in sorted(lines.items()):
        print(f"{line}: {ref}")
    return 0


def cmd_activate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.audit import gmp_context, login
    from pipeline.recipes.activate import PERMISSION, activate_recipe, current_recipes

    previous = current_recipes(settings).get(args.line, settings.stream.line_recipes.get(args.line, ""))
    with gmp_context(settings) as ctx:
        who = login(ctx, args, PERMISSION, args.line)
        activation, record = activate_recipe(settings, ctx.trail, ctx.guard, who, args.line, args.recipe_id,
                                             args.reason or "", previous)
    print(f"line {activation.line} now runs {activation.recipe_ref} (sha256 {activation.sha256[:12]}); "
          f"was {previous or 'none'}; audit record {record.record_id}")
    return 0


def register(sub: argparse._SubParsersAction, settings_of) -> None:  # noqa: ANN001 - argparse internals
    from pipeline.cli.audit import add_auth_args

    run = with_settings(settings_of)

    p = sub.add_parser("recipes", help="product recipes: list, validate, show and switch a line's recipe")
    r = p.add_subparsers(dest="recipes_command", required=True, metavar="ACTION")
    c = r.add_parser("list", help="every recipe of the recipes folder, validated (exit 1 if any is invalid)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run(cmd_list))
    c = r.add_parser("validate", help="check recipe files (unknown keys, missing models, impossible tolerances)")
    c.add_argument("files", nargs="+", type=Path, metavar="FILE")
    c.set_defaults(func=run(cmd_validate))
    c = r.add_parser("active", help="which recipe each line runs (start recipes and activations)")
    c.set_defaults(func=run(cmd_active))
    c = r.add_parser("activate", help="switch a line to a recipe at run time (authenticated, audited)")
    # dest is not `recipe`: that one is `demo --recipe` (the simulated line's start recipe).
    c.add_argument("recipe_id", metavar="RECIPE", help="recipe id (file RECIPE.toml in the recipes folder)")
    c.add_argument("--line", required=True)
    c.add_argument("--reason", help="why (required; kept in the audit trail)")
    add_auth_args(c)
    c.set_defaults(func=run(cmd_activate))
