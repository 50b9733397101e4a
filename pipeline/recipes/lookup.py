"""The recipe a result names (``id@vN``), as the review station, the batch record and the alert
service need it long after the line ran it.

The recipes folder holds each recipe's current version. A ref whose version is no longer (or not)
in the folder cannot say how its units are to be reviewed, so the strictest reading applies (QA
confirms every recovered unit) and the caller is told why.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.recipes.schema import RecipeError, ReviewSpec, load_recipe


def review_spec_for(recipes_dir: Path, ref: str) -> tuple[ReviewSpec, str]:
    """(the [review] rules, '' or why the strict fallback applies) for ref ``id@vN`` ('': no recipe)."""
    if not ref:
        return ReviewSpec(), ""
    recipe_id, _, version = ref.partition("@v")
    try:
        recipe = load_recipe(Path(recipes_dir) / f"{recipe_id}.toml")
    except RecipeError as exc:
        return ReviewSpec(qa_confirms=True), f"recipe {ref} unreadable ({exc}): QA confirms every recovered unit"
    if str(recipe.version) != version:
        return ReviewSpec(qa_confirms=True), (f"recipe {ref} is no longer in {recipes_dir} (it holds v{recipe.version}): "
                                              "QA confirms every recovered unit")
    return recipe.review, ""
