"""End to end on the real embedded stack: Tansu broker, tritonserver, chDB, Faust worker,
actuator and sink processes. Frames go in at the camera; verdicts, fired rejects, dead letters
and stored rows come out, and every unit is accounted for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import onnxruntime
import pytest

from pipeline.clickhouse import ClickHouseClient
from pipeline.dataset import generate_dataset, load_dataset
from pipeline.demo import pipeline_stack, wait_drained
from pipeline.embedded.process import free_port
from pipeline.embedded.triton import TritonServer
from pipeline.gateway import FramePublisher, replay_dataset, run_simulated_line
from pipeline.kafka import make_producer
from pipeline.messages import FrameMeta, GroundTruth, RecipeActivation, now_ns
from pipeline.model import repository
from pipeline.model.preprocess import prepare_image
from pipeline.recipes.activate import publish_activation, recipe_path
from pipeline.recipes.schema import Recipe, load_recipe
from pipeline.report import build_report
from pipeline.runtime import Services
from pipeline.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.e2e

REPO = Settings().triton.model_repository  # the project's triton_models unless overridden
# The version the committed config makes live (docs/models.md: version_policy names it).
LIVE = repository.live_version(repository.read_config(REPO, "tablet_classifier")) or 1
MODEL = repository.version_dir(REPO, "tablet_classifier", LIVE) / repository.ONNX_FILE
GOOD_UNITS = 60
RECIPE_LINE = "line-2"
T = TypeVar("T")


@pytest.fixture(scope="module")
def e2e_settings(embedded_settings: Settings, broker: str, request: pytest.FixtureRequest) -> Settings:
    """The session's broker, Triton and chDB directory; fresh ports for the services."""
    # Fail (not skip) without a model: `make test` trains it first.
    assert MODEL.exists(), "the tablet model is not trained: run `make model`"
    triton_server: TritonServer = request.getfixturevalue("triton_server")
    base = embedded_settings
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": broker}),
            "triton": base.triton.model_copy(update={"url": triton_server.grpc_url}),
            "stream": base.stream.model_copy(update={"web_port": free_port()}),
            "services": base.services.model_copy(
                update={"sink_health_port": free_port(), "actuator_health_port": free_port(),
                        "dashboard_port": free_port()}
            ),
            "simulator": base.simulator.model_copy(update={"rate_per_s": 30.0, "defect_rate": 0.3, "seed": 11}),
            # A +-100 ms gate window: the simulated PLC times its fires in Python, whose wake-ups
            # slip by tens of ms when a 2-core CI machine is saturated (docs/actuation.md).
            # line-2 runs the recipe tests (vials, blisters, labels): same timing as line-1.
            "lines": {
                line: timing.model_copy(update={"gate_window_mm": 0.2 * timing.conveyor_speed_mm_s})
                for line, timing in (base.lines | {RECIPE_LINE: base.lines["line-1"]}).items()
            },
        }
    )


def eventually(probe: Callable[[], T], stop: threading.Event, timeout_s: float = 60.0) -> T:
    """The probe's first truthy answer, polled until a deadline (its last answer after it)."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()) and time.monotonic() < deadline and not stop.is_set():
        stop.wait(0.2)
    return value


def publish_bad_frames(settings: Settings, publisher: FramePublisher, lot: str) -> None:
    """Frames a real line produces now and then: each must be dead-lettered and fail-safe rejected."""
    line, product = settings.simulator.line, settings.simulator.product
    bad = {
        f"{lot}-corrupt": (product, b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50),
        f"{lot}-alien": ("unknown-sku", (PROJECT_ROOT / "tests" / "data" / "one.png").read_bytes()),
        f"{lot}-text": (product, b"this is not an image"),
    }
    for unit, (prod, image) in bad.items():
        capture = now_ns()
        meta = FrameMeta(unit, line, "cam-1", prod, capture, "image/png", lot)
        publisher.publish(meta, image, GroundTruth(unit, line, lot, prod, "good", "none", capture))
    # A frame whose camera sent no metadata but its unit id as the key.
    producer = make_producer(settings.kafka, "e2e-bad")
    producer.produce(settings.kafka.topic_frames, key=f"{lot}-nometa".encode(), value=b"\x89PNG\r\n\x1a\n")
    producer.flush(10)


@pytest.fixture(scope="module")
def running(e2e_settings: Settings) -> Iterator[tuple[Settings, ClickHouseClient, Services]]:
    """Workers, actuator and sink on the session's broker, Triton and chDB."""
    with pipeline_stack(e2e_settings, workers=1) as stack:
        yield stack


def test_dashboard_and_alerts_served_by_the_stack(running: tuple[Settings, ClickHouseClient, Services]) -> None:
    """The stack serves the dashboard (login page open, everything else behind a session) and runs
    the alert service on the broker (docs/alerts.md)."""
    import urllib.error
    import urllib.request

    _, _, services = running
    assert services.dashboard_url and services.alerts_health is not None
    assert services.alerts_health.snapshot()["ready"]
    with urllib.request.urlopen(services.dashboard_url + "login", timeout=10) as r:
        assert r.status == 200 and b"login-form" in r.read()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(services.dashboard_url + "api/state", timeout=10)
    assert refused.value.code == 401


@pytest.mark.timeout(420)
def test_pipeline_end_to_end(running: tuple[Settings, ClickHouseClient, Services]) -> None:
    resolved, client, services = running
    db = resolved.clickhouse.database
    publisher = FramePublisher(resolved)
    lot = run_simulated_line(resolved, publisher, services.stop_event, count=GOOD_UNITS, lot="E2E-LOT-1")
    publish_bad_frames(resolved, publisher, lot)
    publisher.close()
    published = GOOD_UNITS + 3
    assert publisher.stats.published == published
    wait_drained(client, db, lot, published, services.stop_event, timeout_s=180)
    report = build_report(client, db, lot)

    assert report.published == published
    assert report.every_unit_has_one_verdict, report.to_text()
    assert report.every_reject_fired, report.to_text()
    assert report.failsafe_rejected == 3
    assert report.dead_lettered == 3
    assert report.inspected == GOOD_UNITS
    assert report.passed + report.rejected + report.review == published
    # A trained model, not a coin: it rejects defective units far more often than good ones.
    defects = report.defects_published
    goods = GOOD_UNITS - defects
    assert defects > 5 and goods > 5
    detection = 1 - report.escaped_defects / defects
    false_reject_rate = (report.false_rejects - 3) / goods  # the 3 bad frames were "good" units
    assert detection - false_reject_rate >= 0.3, report.to_text()
    assert report.latency_p50_ms > 0 and report.throughput_units_per_s > 0
    assert report.model_versions == [f"tablet_classifier:{LIVE}"]

    reasons = dict(
        client.query(f"SELECT unit_id, reason FROM {db}.dead_letters FINAL WHERE lot = 'E2E-LOT-1'").rows
    )
    assert reasons[f"{lot}-alien"] == "unknown product 'unknown-sku' (no model 'unknown_sku_inspector')"
    assert reasons[f"{lot}-text"] == "frame is neither PNG nor JPEG"
    assert reasons[f"{lot}-corrupt"].startswith("triton:")

    # The frame without metadata: dead-lettered, its unit (from the key) fail-safe rejected and fired.
    nometa = f"{lot}-nometa"
    # Not part of the lot (no metadata), so the drain above did not wait for it: probe.
    rows = eventually(
        lambda: client.query(f"SELECT verdict, cause, error FROM {db}.inspections FINAL WHERE unit_id = '{nometa}'").rows,
        services.stop_event,
    )
    assert len(rows) == 1 and rows[0][0] == "reject" and rows[0][1] == "failsafe"
    assert "missing metadata" in rows[0][2]
    fired = eventually(
        lambda: client.query(f"SELECT count() FROM {db}.actuations FINAL WHERE unit_id = '{nometa}'").scalar(),
        services.stop_event,
    )
    assert fired == 1

    stored = client.query(
        f"""SELECT count(), countIf(model_version = '{LIVE}'), min(latency_ms) > 0
            FROM {db}.inspections FINAL WHERE lot = '{lot}' AND inspected"""
    ).rows[0]
    assert stored[0] == GOOD_UNITS and stored[1] == GOOD_UNITS and stored[2]


@pytest.mark.timeout(300)
def test_dataset_replay_through_the_pipeline(
    running: tuple[Settings, ClickHouseClient, Services], tmp_path: Path
) -> None:
    resolved, client, services = running
    data = generate_dataset(tmp_path / "ds", 12, [resolved.simulator.product], 0.5, seed=5)
    publisher = FramePublisher(resolved)
    lot = replay_dataset(resolved, publisher, load_dataset(data), services.stop_event, lot="E2E-REPLAY")
    publisher.close()
    wait_drained(client, resolved.clickhouse.database, lot, 12, services.stop_event, timeout_s=120)
    report = build_report(client, resolved.clickhouse.database, lot)
    assert report.published == report.inspected == 12
    assert report.every_unit_has_one_verdict and report.every_reject_fired
    sources = client.query(
        f"SELECT source FROM {resolved.clickhouse.database}.ground_truth FINAL WHERE lot = '{lot}' ORDER BY source"
    ).rows
    assert len(sources) == 12 and all(s[0].startswith("dataset:") and s[0].endswith(".png") for s in sources)

    # The serving path (gRPC -> ensemble -> python preprocess -> ONNX) scores exactly what the
    # exported model scores offline on the same files.
    served = dict(
        client.query(
            f"""SELECT g.source, i.score FROM {resolved.clickhouse.database}.inspections AS i FINAL
                INNER JOIN {resolved.clickhouse.database}.ground_truth AS g FINAL USING unit_id
                WHERE i.lot = '{lot}'"""
        ).rows
    )
    session = onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    for source, score in served.items():
        x = prepare_image((data / source.removeprefix("dataset:")).read_bytes())[None]
        offline = float(session.run(["SCORE"], {"INPUT": x})[0][0, 0])
        assert abs(offline - score) < 1e-4, source


# ------------------------------------------------------------------ recipes: one line, three products
def _worker_recipes(services: Services) -> dict[str, str]:
    import json
    import urllib.request

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
    assert eventually(lambda: _worker_recipes(services).get(RECIPE_LINE) == recipe.ref, services.stop_event), (
        _worker_recipes(services))
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
        import json

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
        ).rows, services.stop_event)
        assert alert and "seen twice" in alert[0][0]
