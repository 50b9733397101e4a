"""Product recipes: which inspections, models, thresholds and tolerances a line runs (docs/recipes.md)."""

from pipeline.recipes.schema import InspectionSpec, Recipe, RecipeError, load_recipe, parse_recipe

__all__ = ["InspectionSpec", "Recipe", "RecipeError", "load_recipe", "parse_recipe"]
