"""The pipelined worker (several batches in flight, acked in order) and Triton replicas, with
real processes: Tansu, two tritonservers, a Faust worker, the actuator, the chDB sink and the
simulated PLC.

A line runs while (1) the worker is killed with SIGKILL mid-run, batches in flight, and the
supervisor restarts it; (2) one of the two Triton replicas is stopped, and requests go on to the
other; (3) the other one stops too, and units fail safe as with a single Triton. Shown from
ClickHouse: every published unit has exactly one stored verdict (redelivered frames give the same
verdict, stored once), no unit passed the gate without a pass verdict in time, the lot
reconciles; while one replica was left, no unit was fail-safe rejected for inference.

Verdicts come from a tiny contract model that passes every unit (tests/contract_models.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from contract_models import add_version, model_repository, own_triton
from support import eventually

from pipeline.analytics.reconciliation import build_reconciliation
from pipeline.clickhouse import ClickHouseClient
from pipeline.demo.run import pipeline_stack, wait_drained
from pipeline.demo.services import Services, http_ready
from pipeline.embedded.process import free_port
from pipeline.embedded.triton import TritonServer
from pipeline.gateway.publisher import FramePublisher, run_simulated_line
from pipeline.settings import Settings
from pipeline.settings.actuation import LineTimingSettings, WatchdogSettings

PRODUCT = "tablet-round-white-10mm"


@pytest.fixture(scope="module")
def replicas(embedded_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TritonServer]]:
    """Two tritonservers of our own (this test stops them) serving a model that passes every unit."""
    repo = model_repository(tmp_path_factory.mktemp("pipelining-repo"))
    add_version(repo, "tablet_classifier", 1, review=0.3, reject=0.7, bias=0.2)
    with own_triton(embedded_settings, repo, tmp_path_factory.mktemp("replica-a")) as (_, a), \
            own_triton(embedded_settings, repo, tmp_path_factory.mktemp("replica-b")) as (_, b):
        yield [a, b]


@pytest.fixture(scope="module")
def line(
    embedded_settings: Settings, broker: str, replicas: list[TritonServer]
) -> Iterator[tuple[Settings, ClickHouseClient, Services]]:
    base, k = embedded_settings, embedded_settings.kafka
    suffix = uuid.uuid4().hex[:6]
    topics = {
        name: f"{getattr(k, name)}-pl-{suffix}"
        for name in ("topic_frames", "topic_captures", "topic_results", "topic_rejects", "topic_deadletter", "topic_truth",
                     "topic_actuations", "topic_heartbeats", "topic_gate_events", "topic_alarms")
    }
    a, b = replicas
    settings = base.model_copy(update={
        "kafka": k.model_copy(update={"bootstrap_servers": broker} | topics),
        "triton": base.triton.model_copy(update={"url": a.grpc_url, "urls": [b.grpc_url], "request_timeout_s": 5.0}),
        # Small batches, several in flight: a kill finds batches decided but not acknowledged.
        "stream": base.stream.model_copy(update={"web_port": free_port(), "app_id": f"pl-worker-{suffix}",
                                                 "batch_size": 4, "max_in_flight": 4}),
        "services": base.services.model_copy(update={
            "sink_health_port": free_port(), "actuator_health_port": free_port(),
            "sink_group": f"pl-sink-{suffix}", "actuator_group": f"pl-actuator-{suffix}",
        }),
        "simulator": base.simulator.model_copy(update={"product": PRODUCT, "rate_per_s": 25.0, "seed": 3}),
        # At the gate 2 s after capture, a ±100 ms window (a loaded 2-core test host, as test_failsafe).
        "lines": {"line-1": LineTimingSettings(conveyor_speed_mm_s=100.0, camera_to_gate_mm=200.0, gate_window_mm=20.0)},
        "watchdog": WatchdogSettings(clear_after_s=1.0, heartbeat_interval_s=0.25),
        "plc": base.plc.model_copy(update={"embedded_port": free_port()}),
    })
    with pipeline_stack(settings, workers=1) as stack:
        yield stack


@pytest.mark.timeout(420)
def test_kill_9_and_a_lost_replica_lose_or_duplicate_no_unit(
    line: tuple[Settings, ClickHouseClient, Services], replicas: list[TritonServer]
) -> None:
    resolved, client, services = line
    db = resolved.clickhouse.database
    lot = f"PIPELINE-{uuid.uuid4().hex[:6]}"

    def scalar(sql: str, **params: Any) -> Any:
        return client.query(sql, {"lot": lot} | params).scalar()

    def stored_since(after_ns: int, condition: str = "1") -> int:
        return int(scalar(
            f"""SELECT count() FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND {condition}
                AND toUnixTimestamp64Micro(capture_time) > {{t:Int64}}""", t=after_ns // 1000))

    line_stop = threading.Event()
    publisher = FramePublisher(resolved)
    feeder = threading.Thread(
        target=run_simulated_line, args=(resolved, publisher, line_stop), kwargs={"lot": lot}, daemon=True
    )
    started = time.time_ns()
    feeder.start()
    try:
        eventually(lambda: stored_since(started, "cause = 'model'") >= 50, 90, "units inspected before the kill")

        # 1. SIGKILL with batches in flight: their frames were not acked, so they come again.
        worker = services.processes[0]
        assert worker.name == "worker-0" and worker.pid is not None
        os.killpg(worker.pid, signal.SIGKILL)
        worker.stop(5)
        eventually(lambda: services.processes[0] is not worker and services.processes[0].alive, 120,
                   "worker restarted by the supervisor")
        services.processes[0].wait_ready(http_ready(f"{services.worker_urls()[0]}/readyz"), 120)
        back = time.time_ns()
        eventually(lambda: stored_since(back, "cause = 'model'") >= 25, 60, "units inspected after the restart")

        # 2. One replica goes away: requests go on to the other, no unit fails safe for it.
        one_left = time.time_ns()
        replicas[1].stop(10)
        eventually(lambda: stored_since(one_left, "cause = 'model'") >= 50, 60, "units inspected on one replica")
        reasons = client.query(
            f"""SELECT reason, count() FROM {db}.dead_letters FINAL WHERE lot = {{lot:String}}
                AND toUnixTimestamp64Micro(dead_time) > {{t:Int64}} GROUP BY reason""",
            {"lot": lot, "t": one_left // 1000}).rows
        assert stored_since(one_left, "cause = 'failsafe'") == 0, f"units failed safe with a replica up: {reasons}"

        # 3. The last one goes too: units fail safe, as with a single Triton.
        none_left = time.time_ns()
        replicas[0].stop(10)
        eventually(lambda: stored_since(none_left, "cause = 'failsafe'") >= 10, 60, "units failed safe without Triton")
    finally:
        line_stop.set()
        feeder.join(30)
        publisher.close()
    published = publisher.stats.published
    wait_drained(client, db, lot, published, services.stop_event, timeout_s=180)

    # Every unit has exactly one stored verdict; none was lost, none decided twice differently.
    assert scalar(f"SELECT uniqExact(unit_id) FROM {db}.inspections FINAL WHERE lot = {{lot:String}}") == published
    assert scalar(f"SELECT count() FROM {db}.inspections FINAL WHERE lot = {{lot:String}}") == published
    assert scalar(
        f"""SELECT count() FROM (SELECT unit_id FROM {db}.inspections WHERE lot = {{lot:String}}
            GROUP BY unit_id HAVING uniqExact(verdict, cause) > 1)""") == 0
    # While a replica was up, every unit was inspected: fail-safe verdicts only for units captured
    # when both were stopping (a unit captured up to 2 s before may still have been in the worker).
    assert stored_since(started, "cause = 'failsafe'") == stored_since(none_left - 2_000_000_000, "cause = 'failsafe'")

    # Nothing escaped: every unit at the gate, none passed without a pass verdict before its cutoff.
    rec = build_reconciliation(client, db, lot, positive_release=resolved.plc.positive_release)
    (r,) = rec.lines
    assert rec.every_unit_accounted, rec.to_text()
    assert r.captured == published and r.unaccounted == 0 and r.passed_without_pass_verdict == 0, rec.to_text()
    assert scalar(
        f"""SELECT count() FROM {db}.gate_events FINAL WHERE lot = {{lot:String}} AND outcome = 'passed'
            AND (verdict != 'pass' OR verdict_time IS NULL OR verdict_time > cutoff_time)""") == 0
