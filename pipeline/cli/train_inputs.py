"""What `linesight train` reads from the product's recipes: acceptance criteria and `[model]`.

A product's recipe is where QA writes what a version must show (`[acceptance]`) and what is
true of the product on its line (`[model]`: invariance, smallest defect). Without `--recipe`,
the recipes of the product in the recipes folder are read; several that disagree are refused.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.model.release import AcceptanceCriteria
    from pipeline.recipes.schema import Recipe


def product_recipes(settings: Settings, product: str, recipe: str | None) -> tuple[list[tuple[Path, Recipe]], str]:
    """The recipes that speak for `product`, and a phrase saying where they were looked for.

    `recipe`: a recipe id (in `settings.stream.recipes_dir`) or a recipe file; it must judge
    `product`. Without one, every recipe of `product` in the recipes folder; a recipe of this
    product that does not validate is refused (RecipeError).
    """
    from pipeline.recipes.schema import load_recipe

    folder = Path(settings.stream.recipes_dir)
    if recipe:
        path = Path(recipe) if recipe.endswith(".toml") or Path(recipe).is_file() else folder / f"{recipe}.toml"
        chosen = load_recipe(path)
        if chosen.product != product:
            raise ValueError(f"recipe {chosen.ref} ({path}) judges product {chosen.product!r}, not {product!r}")
        return [(path, chosen)], f"recipe {chosen.ref}, {path}"
    mine = []
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            named = tomllib.loads(path.read_text(encoding="utf-8")).get("product")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            named = None  # not this command's to judge: `linesight recipes validate` reports it
        if named == product:
            mine.append((path, load_recipe(path)))
    where = (f"recipe {', '.join(r.ref for _, r in mine)}" if mine else f"no recipe of product {product!r} in {folder}")
    return mine, where


def train_acceptance(
    settings: Settings, product: str, mode: str, recipe: str | None
) -> tuple[AcceptanceCriteria | None, str]:
    """(AcceptanceCriteria or None for the mode's defaults, where they come from) for `linesight train`.

    The recipe given, else the product's recipe that names `[acceptance]` (several naming
    different criteria: refused, choose with --recipe); none: the mode's defaults
    (docs/models.md, Release gate).
    """
    mine, where = product_recipes(settings, product, recipe)
    naming = [(path, r, r.acceptance(mode)) for path, r in mine if r.acceptance(mode) is not None]
    if len({c for _, _, c in naming}) > 1:
        raise ValueError(f"recipes {', '.join(r.ref for _, r, _ in naming)} of product {product!r} name different "
                         "acceptance criteria: choose one with --recipe")
    if naming:
        path, chosen, criteria = naming[0]
        return criteria, f"recipe {chosen.ref} ({path}) [acceptance], {mode} mode"
    if recipe:
        return None, f"defaults for {mode} mode ({where}, names no [acceptance])"
    said = f"{where} names no [acceptance]" if mine else where
    return None, f"defaults for {mode} mode ({said}; docs/models.md, Release gate)"


@dataclass(frozen=True)
class Declaration:
    """What the product's recipe declares about its units (`[model]`), and which recipe said it."""

    invariance: str | None
    invariance_source: str | None
    smallest_defect_px: float | None


def train_declaration(settings: Settings, product: str, recipe: str | None) -> Declaration:
    """The product's `[model]` declaration: from the recipe given, else from the product's
    recipes in the recipes folder (several declaring differently: refused, choose with --recipe)."""
    mine, _ = product_recipes(settings, product, recipe)
    declaring = [(path, r) for path, r in mine if r.doc.model is not None]
    if len({r.doc.model for _, r in declaring}) > 1:
        raise ValueError(f"recipes {', '.join(r.ref for _, r in declaring)} of product {product!r} declare different "
                         "[model] tables: choose one with --recipe")
    if not declaring:
        return Declaration(None, None, None)
    path, chosen = declaring[0]
    spec = chosen.doc.model
    assert spec is not None
    return Declaration(spec.invariance, f"recipe {chosen.ref} ({path}) [model]" if spec.invariance else None,
                       spec.smallest_defect_px)
