"""A two-station line on the real embedded stack: Tansu broker, tritonserver, a Faust worker, the
actuator and the chDB sink. Each unit is seen by a side camera at the line's trigger point and a
top camera 50 mm further on; some units get frames from both stations, some from one only.

Verdicts come from a tiny contract model that passes every unit (tests/contract_models.py), so
every complete unit must be released and every unit missing a station must be rejected as late,
with that station named; ClickHouse keeps one row per station frame and one unit_verdicts row
per unit, and the lot's reconciliation counts per station.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from contract_models import add_version, model_repository, own_triton
from support import eventually

from pipeline.analytics.reconciliation import build_reconciliation
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.times import now_ns
from pipeline.demo.run import pipeline_stack
from pipeline.demo.services import Services
from pipeline.embedded.process import free_port
from pipeline.embedded.triton import TritonServer
from pipeline.gateway.publisher import FramePublisher
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.settings.actuation import LineTimingSettings, StationSettings, WatchdogSettings
from pipeline.wire.messages import FrameMeta

PRODUCT = "tablet-round-white-10mm"
CAMERAS = {"side": "SER-SIDE-01", "top": "SER-TOP-02"}
IMAGE = (PROJECT_ROOT / "tests" / "data" / "one.png").read_bytes()


@pytest.fixture(scope="module")
def triton(embedded_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Our own tritonserver serving a model that passes every unit."""
    repo = model_repository(tmp_path_factory.mktemp("stations-repo"))
    add_version(repo, "tablet_classifier", 1, review=0.3, reject=0.7, bias=0.2)
    with own_triton(embedded_settings, repo, tmp_path_factory.mktemp("stations-triton")) as (_, server):
        yield server


@pytest.fixture(scope="module")
def line(embedded_settings: Settings, broker: str, triton: TritonServer) -> Iterator[tuple[Settings, ClickHouseClient, Services]]:
    base, k = embedded_settings, embedded_settings.kafka
    suffix = uuid.uuid4().hex[:6]
    topics = {
        name: f"{getattr(k, name)}-st-{suffix}"
        for name in ("topic_frames", "topic_captures", "topic_results", "topic_rejects", "topic_deadletter", "topic_truth",
                     "topic_actuations", "topic_heartbeats", "topic_gate_events", "topic_alarms", "topic_unit_verdicts")
    }
    # 300 mm from the trigger point to the gate at 100 mm/s: 3 s from the side capture to the gate.
    timing = LineTimingSettings(
        conveyor_speed_mm_s=100.0, camera_to_gate_mm=300.0, gate_window_mm=20.0,
        stations=[StationSettings(name="side", camera=CAMERAS["side"], offset_mm=0.0),
                  StationSettings(name="top", camera=CAMERAS["top"], offset_mm=50.0)],
    )
    settings = base.model_copy(update={
        "kafka": k.model_copy(update={"bootstrap_servers": broker} | topics),
        "triton": base.triton.model_copy(update={"url": triton.grpc_url, "request_timeout_s": 5.0}),
        "stream": base.stream.model_copy(update={"web_port": free_port(), "app_id": f"st-worker-{suffix}"}),
        "services": base.services.model_copy(update={
            "sink_health_port": free_port(), "actuator_health_port": free_port(),
            "sink_group": f"st-sink-{suffix}", "actuator_group": f"st-actuator-{suffix}",
        }),
        "lines": {"line-1": timing},
        "plc": base.plc.model_copy(update={"enabled": False}),  # the actuator's in-process gate
        "watchdog": WatchdogSettings(clear_after_s=1.0, heartbeat_interval_s=0.25),
    })
    with pipeline_stack(settings, workers=1) as stack:
        yield stack


def publish(publisher: FramePublisher, lot: str, unit: str, stations: tuple[str, ...]) -> None:
    for station in stations:
        meta = FrameMeta(unit, "line-1", CAMERAS[station], PRODUCT, now_ns(), "image/png", lot, station=station)
        assert publisher.publish(meta, IMAGE)


@pytest.mark.timeout(420)
def test_a_unit_is_released_only_when_every_station_passed_it(
    line: tuple[Settings, ClickHouseClient, Services],
) -> None:
    resolved, client, _ = line
    db = resolved.clickhouse.database
    lot = f"STATIONS-{uuid.uuid4().hex[:6]}"

    def rows(sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return client.query(sql, {"lot": lot} | params).rows

    def verdict_of(unit: str) -> str:
        got = rows(f"SELECT verdict FROM {db}.unit_verdicts FINAL WHERE unit_id = {{u:String}}", u=unit)
        return str(got[0][0]) if got else ""

    publisher = FramePublisher(resolved)
    # Warm up until a complete unit passes: the worker and Triton answer within the 3 s now (a
    # loaded host may time out the first units, or trip the watchdog while the worker starts).
    deadline, n = time.monotonic() + 180, 0
    while True:
        n += 1
        warm = f"{lot}-warm-{n}"
        publish(publisher, f"{lot}-WARM", warm, ("side", "top"))
        if eventually(lambda w=warm: verdict_of(w), 30, f"unit verdict of {warm}") == "pass":
            break
        assert time.monotonic() < deadline, "no warm-up unit passed"

    complete = [f"{lot}-both-{i}" for i in range(6)]
    side_only = [f"{lot}-side-{i}" for i in range(3)]
    top_only = [f"{lot}-top-{i}" for i in range(2)]
    for unit in complete + side_only:
        publish(publisher, lot, unit, ("side",))
    for unit in complete + top_only:
        publish(publisher, lot, unit, ("top",))
    publisher.close()
    units = complete + side_only + top_only

    stored = eventually(
        lambda: (r := rows(f"""SELECT unit_id, verdict, cause, stations.station, stations.verdict, missing, reason
                               FROM {db}.unit_verdicts FINAL WHERE lot = {{lot:String}}""")) and len(r) == len(units) and r,
        120, "one unit verdict per unit",
    )
    by_unit = {r[0]: r[1:] for r in stored}
    for unit in complete:
        assert by_unit[unit][:4] == ("pass", "model", ["side", "top"], ["pass", "pass"]), by_unit[unit]
        assert by_unit[unit][4] == []
    for unit, missing in [(u, "top") for u in side_only] + [(u, "side") for u in top_only]:
        verdict, cause, _, _, gone, reason = by_unit[unit]
        assert (verdict, cause, gone) == ("reject", "late", [missing]), by_unit[unit]
        assert f"no verdict from station {missing} by the cutoff" in reason
    assert rows(f"SELECT count() FROM {db}.unit_verdicts WHERE lot = {{lot:String}}")[0][0] == len(units)

    # The gate: complete units released, the others rejected with the missing station named.
    gate = eventually(
        lambda: (r := rows(f"SELECT unit_id, outcome, cause, reason FROM {db}.gate_events FINAL WHERE lot = {{lot:String}}"))
        and len(r) == len(units) and r, 60, "a gate event per unit",
    )
    for unit, outcome, cause, reason in gate:
        if unit in complete:
            assert (outcome, cause) == ("passed", "model")
        else:
            assert (outcome, cause) == ("fired", "late") and "no verdict from station" in reason
    # One inspections row per station frame, each naming its station and camera.
    frames = eventually(
        lambda: (r := rows(f"SELECT station, camera, count() FROM {db}.inspections FINAL WHERE lot = {{lot:String}} "
                           "GROUP BY station, camera ORDER BY station")) and sum(x[2] for x in r) == 17 and r,
        60, "every station frame stored",
    )
    assert frames == [("side", CAMERAS["side"], 9), ("top", CAMERAS["top"], 8)]

    rec = build_reconciliation(client, db, lot, positive_release=resolved.plc.positive_release)
    (counts,) = rec.lines
    assert (counts.captured, counts.inspected_passed, counts.failsafe_late, counts.unaccounted) == (11, 6, 5, 0)
    assert [(c.station, c.judged, c.passed, c.missing) for c in counts.stations] == [("side", 9, 9, 2), ("top", 8, 8, 3)]
