"""Which [review] rules apply to a unit or a lot: those of the recipe that judged it.

Results carry the judging recipe's ref (``id@vN``); the recipes folder holds each recipe's current
version. A ref whose version is no longer (or not) in the folder cannot say how its units are to
be reviewed, so the strictest reading applies (QA confirms every recovered unit) and the caller
is told why.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.clickhouse import ClickHouseClient
from pipeline.recipes.schema import RecipeError, ReviewSpec, load_recipe


def review_spec_for(recipes_dir: Path, ref: str) -> tuple[ReviewSpec, str]:
    """(the rules, '' or why the strict fallback applies) for recipe ref ``id@vN`` ('' : no recipe)."""
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


def lot_recipe(client: ClickHouseClient, db: str, lot: str) -> str:
    """The recipe ref that judged most of the lot's production units ('' : none)."""
    rows = client.query(
        f"""SELECT recipe, uniqExact(unit_id) AS n FROM {db}.inspections FINAL
            WHERE lot = {{lot:String}} AND purpose = '' GROUP BY recipe ORDER BY n DESC, recipe LIMIT 1""",
        {"lot": lot},
    ).rows
    return str(rows[0][0]) if rows else ""
