"""Which recipe judged a lot: the one most of its production units name (their [review] rules are
`pipeline.recipes.lookup.review_spec_for`)."""

from __future__ import annotations

from pipeline.clickhouse import ClickHouseClient


def lot_recipe(client: ClickHouseClient, db: str, lot: str) -> str:
    """The recipe ref that judged most of the lot's production units ('' : none)."""
    rows = client.query(
        f"""SELECT recipe, uniqExact(unit_id) AS n FROM {db}.inspections FINAL
            WHERE lot = {{lot:String}} AND purpose = '' GROUP BY recipe ORDER BY n DESC, recipe LIMIT 1""",
        {"lot": lot},
    ).rows
    return str(rows[0][0]) if rows else ""
