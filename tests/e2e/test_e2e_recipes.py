"""Recipes end to end on the real embedded stack: one line switched at run time to a vial, a
blister-pack and a label recipe (docs/recipes.md); every unit judged by the recipe, measured,
accounted for at the gate; a unit of a product the recipe does not know is dead-lettered.

Its own module (own stack, own recipes topic): an activation lives on the session broker, and a
stack of another module must not pick up this module's recipes.
"""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest
from support import eventually

from pipeline.analytics.run_report import build_report
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.times import now_ns
from pipeline.demo.run import wait_drained
from pipeline.demo.services import Services
from pipeline.gateway.publisher import FramePublisher, run_simulated_line
from pipeline.recipes.activate import publish_activation, recipe_path
from pipeline.recipes.schema import Recipe, load_recipe
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.wire.messages import FrameMeta, GroundTruth, RecipeActivation

RECIPE_LINE = "line-1"


@pytest.fixture(scope="module")
def e2e_settings(e2e_settings: Settings) -> Settings:
    """The shared e2e settings with a recipes topic of this module's own."""
    kafka = e2e_settings.kafka.model_copy(update={"topic_recipes": f"linesight.recipes-{uuid.uuid4().hex[:8]}"})
    return e2e_settings.model_copy(update={"kafka": kafka})


def _worker_recipes(services: Services) -> dict[str, str]:
    try:
        with urllib.request.urlopen(services.worker_urls()[0] + "/healthz", timeout=5) as r:
            return json.loads(r.read()).get("recipes", {})
    except OSError:
        return {}


def _switch(settings: Settings, services: Services, recipe_id: str) -> Recipe:
    """Activate a recipe on the recipe line as `linesight recipes activate` does, and wait (with a
    deadline) until the worker runs it: a changeover, not a race with the first frames."""
    recipe = load_recipe(recipe_path(settings, recipe_id), settings.triton.model_repository)
    activation = RecipeActivation(RECIPE_LINE, recipe.to_dict(), recipe.ref, recipe.sha256, "e2e", "changeover", now_ns())
    publish_activation(settings, activation)
    eventually(lambda: _worker_recipes(services).get(RECIPE_LINE) == recipe.ref, 60, f"the worker to run {recipe.ref}")
    return recipe


UNITS_PER_PRODUCT = 30


@pytest.mark.timeout(420)
@pytest.mark.parametrize("recipe_id", ["vial-2r-clear-5ml", "blister-2x5-round-white", "carton-label-gs1"])
def test_a_line_switches_recipe_and_judges_each_product(
    running: tuple[Settings, ClickHouseClient, Services], recipe_id: str
) -> None:
    resolved, client, services = running
    db = resolved.clickhouse.database
    recipe = _switch(resolved, services, recipe_id)
    line = resolved.model_copy(update={"simulator": resolved.simulator.model_copy(
        update={"line": RECIPE_LINE, "product": recipe.product, "defect_rate": 0.4, "seed": 23})})
    publisher = FramePublisher(line)
    lot = run_simulated_line(line, publisher, services.stop_event, count=UNITS_PER_PRODUCT, lot=f"E2E-{recipe_id}")
    # A unit of a product the line's recipe does not know (the previous product still coming).
    capture = now_ns()
    stray = FrameMeta(f"{lot}-stray", RECIPE_LINE, "cam-1", "tablet-round-white-10mm", capture, "image/png", lot)
    publisher.publish(stray, (PROJECT_ROOT / "tests" / "data" / "one.png").read_bytes(),
                      GroundTruth(stray.unit_id, RECIPE_LINE, lot, stray.product, "good", "none", capture))
    publisher.close()
    published = UNITS_PER_PRODUCT + 1
    wait_drained(client, db, lot, published, services.stop_event, timeout_s=180)
    report = build_report(client, db, lot)
    assert report.every_unit_has_one_verdict and report.every_reject_fired, report.to_text()
    assert report.failsafe_rejected == 1 and report.dead_lettered == 1 and report.inspected == UNITS_PER_PRODUCT
    (reason,) = client.query(f"SELECT reason FROM {db}.dead_letters FINAL WHERE unit_id = '{lot}-stray'").rows[0]
    assert f"not in recipe {recipe.ref} of line '{RECIPE_LINE}'" in reason

    rows = client.query(
        f"""SELECT i.unit_id, i.verdict, i.defect, i.recipe, i.measurements, i.measured_text, i.parts, i.reasons,
                   g.label, g.defect AS truth, g.source
            FROM {db}.inspections AS i FINAL INNER JOIN {db}.ground_truth AS g FINAL USING unit_id
            WHERE i.lot = {{lot:String}} AND i.inspected""", {"lot": lot}).named()
    assert len(rows) == UNITS_PER_PRODUCT and {r["recipe"] for r in rows} == {recipe.ref}
    assert report.recipes == [(recipe.ref, published)] and report.measurements
    defects = [r for r in rows if r["label"] == "defect"]
    goods = [r for r in rows if r["label"] == "good"]
    assert len(defects) >= 5 and len(goods) >= 5
    caught = sum(r["verdict"] != "pass" for r in defects) / len(defects)
    false_rejects = sum(r["verdict"] != "pass" for r in goods) / len(goods)
    assert caught >= 0.8 and false_rejects <= 0.15, [(r["unit_id"], r["truth"], r["verdict"], r["reasons"]) for r in rows]
    for r in rows:  # every result carries its numbers; every reject its reasons
        assert r["measurements"] or r["measured_text"], r
        assert (r["verdict"] == "pass") == (not r["reasons"]), r
    kind = recipe.inspections[0].kind
    if kind == "vial":
        nominal = recipe.params[recipe.inspections[0].name].nominal_fill_mm  # type: ignore[attr-defined]
        fills = [r["measurements"]["fill_mm"] for r in rows if r["truth"] in ("none", "particles")]
        assert fills and all(abs(f - nominal) < 1.5 for f in fills), fills
    elif kind == "blister":
        for r in rows:
            pockets = json.loads(r["parts"])
            assert [p["index"] for p in pockets] == list(range(10))
            assert (r["verdict"] == "pass") == all(p["verdict"] == "pass" for p in pockets)
    else:
        gtin = recipe.params[recipe.inspections[0].name].gtin  # type: ignore[attr-defined]
        passed = [r for r in rows if r["verdict"] == "pass"]
        assert passed and all(r["measured_text"]["gtin"] == gtin and r["measured_text"]["serial"] for r in passed)
        # Repeated serials are flagged, not rejected: in the batch record and as a critical alert.
        repeats = {r["unit_id"] for r in rows if r["source"] == "simulator:duplicate-serial"}
        serials = [r["measured_text"].get("serial", "") for r in rows]
        duplicated = {r["unit_id"] for r in rows if r["measured_text"].get("serial") and serials.count(
            r["measured_text"]["serial"]) > 1}
        # (a repeat of a serial whose first print was unreadable has nothing to repeat)
        assert repeats & duplicated and duplicated - repeats <= {
            r["unit_id"] for r in rows if r["measured_text"].get("serial") in {
                x["measured_text"].get("serial") for x in rows if x["unit_id"] in repeats}}, (repeats, duplicated)
        assert {u for d in report.duplicate_serials for u in d["units"]} == duplicated
        alert = eventually(lambda: client.query(
            f"SELECT message FROM {db}.alerts FINAL WHERE kind = 'duplicate_serial' AND line = '{RECIPE_LINE}'"
        ).rows, 60, "the duplicate_serial alert")
        assert alert and "seen twice" in alert[0][0]
