"""End to end on the real embedded stack: Tansu broker, tritonserver, chDB, Faust worker,
actuator and sink processes. Frames go in at the camera; verdicts, fired rejects, dead letters
and stored rows come out, and every unit is accounted for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import onnxruntime
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import LIVE_TABLET_MODEL, LIVE_TABLET_VERSION

from pipeline.analytics.run_report import build_report
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.times import now_ns
from pipeline.datasets.folder import load_dataset
from pipeline.demo.run import wait_drained
from pipeline.demo.services import Services
from pipeline.gateway.publisher import FramePublisher, replay_dataset, run_simulated_line
from pipeline.imaging.generate import generate_dataset
from pipeline.kafka.clients import make_producer
from pipeline.model.preprocess import prepare_image
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.wire.messages import FrameMeta, GroundTruth

LIVE, MODEL = LIVE_TABLET_VERSION, LIVE_TABLET_MODEL  # the live tablet classifier (conftest)
GOOD_UNITS = 60
T = TypeVar("T")


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


def metric_totals(url: str) -> dict[str, float]:
    """A real service's /metrics, parsed: each sample name summed over its labels."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


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
    assert reasons[f"{lot}-corrupt"].startswith("not a decodable PNG/JPEG image")  # refused before Triton

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

    # The same work in the worker's and the actuator's /metrics (docs/observability.md).
    worker = metric_totals(f"http://127.0.0.1:{resolved.stream.web_port}/metrics")
    assert worker["linesight_frames_total"] >= published + 1
    assert worker["linesight_capture_to_verdict_seconds_count"] >= GOOD_UNITS
    assert worker["linesight_dead_letters_total"] >= 4 and worker["linesight_verdicts_total"] >= published + 1
    assert worker["linesight_batch_size_count"] >= 1
    actuator = metric_totals(f"http://127.0.0.1:{resolved.services.actuator_health_port}/metrics")
    assert actuator["linesight_gate_events_total"] >= published
    assert actuator["linesight_failsafe_rejects_total"] >= 4  # the worker's fail-safe commands, fired
    assert actuator["linesight_gate_margin_seconds_count"] >= GOOD_UNITS
    assert "linesight_consumer_lag" in actuator and actuator["linesight_messages_consumed_total"] >= published


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
