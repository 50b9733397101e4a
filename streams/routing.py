"""Which inspections judge a frame: its line's recipe, else its product's classifier.

Kept apart from the decision logic so the routing rules (docs/recipes.md, docs/models.md) read
in one place: a line with a recipe runs exactly that recipe's inspections, and a frame of a
product that recipe does not know is refused (dead-lettered, fail-safe rejected); a line with
no recipe sends each product to its inspection ensemble by convention. A recipe that declares
stations runs on each frame only the inspections of the frame's station (header ls-station); a
frame from a station the recipe does not declare, or naming none, is refused likewise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pipeline.inspections.base import InspectionParams
from pipeline.inspections.kinds import CLASSIFIER
from pipeline.model.repository import RepositoryError, slug
from pipeline.recipes.book import RecipeBook, Refused
from pipeline.recipes.schema import Recipe
from pipeline.wire.messages import FrameMeta, MessageError


def ensemble_for(product: str, mapping: dict[str, str]) -> str:
    """The inspection ensemble of `product`: configured, else `<slug>_inspector` (docs/models.md)."""
    if product in mapping:
        return mapping[product]
    try:
        return f"{slug(product)}_inspector"
    except RepositoryError as exc:
        raise MessageError(f"unknown product {product!r}: {exc}") from None


@dataclass(frozen=True)
class Step:
    """One inspection a frame goes through: a classifier ensemble or a measurement model."""

    kind: str
    name: str
    model: str
    params_json: bytes = b""
    params: InspectionParams | None = None


class RecipeRefusal(MessageError):
    """The line's recipe cannot judge this frame (refused recipe, product it does not know)."""


def plan_for(meta: FrameMeta, models: dict[str, str], book: RecipeBook | None) -> tuple[Recipe | None, tuple[Step, ...]]:
    """Which inspections judge this frame: its line's recipe, else the product's model."""
    entry = book.get(meta.line) if book is not None else None
    if entry is None:
        return None, (Step(CLASSIFIER, CLASSIFIER, ensemble_for(meta.product, models)),)
    if isinstance(entry, Refused):
        raise RecipeRefusal(f"line {meta.line!r} has no runnable recipe: {entry.reason}")
    if meta.product != entry.product:
        raise RecipeRefusal(
            f"product {meta.product!r} is not in recipe {entry.ref} of line {meta.line!r} "
            f"(which runs {entry.product!r})"
        )
    if entry.stations:
        if entry.station(meta.station) is None:
            raise RecipeRefusal(
                f"station {meta.station!r} is not in recipe {entry.ref} of line {meta.line!r} "
                f"(its stations: {', '.join(s.name for s in entry.stations)})"
            )
        return entry, station_steps(entry, meta.station)
    return entry, recipe_steps(entry)


@lru_cache(maxsize=64)
def recipe_steps(recipe: Recipe) -> tuple[Step, ...]:
    """A recipe's inspections as steps, built once per recipe (not per frame)."""
    return tuple(
        Step(spec.kind, spec.name, spec.model,
             recipe.params_json[spec.name] if spec.kind != CLASSIFIER else b"", recipe.params[spec.name])
        for spec in recipe.inspections
    )



@lru_cache(maxsize=256)
def station_steps(recipe: Recipe, station: str) -> tuple[Step, ...]:
    """The steps of one declared station of a recipe (its `[[station]]` inspections)."""
    spec = recipe.station(station)
    names = set(spec.inspections) if spec is not None else set()
    return tuple(step for step in recipe_steps(recipe) if step.name in names)
