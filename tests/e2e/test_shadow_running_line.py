"""`linesight models shadow|compare` beside a real running line (Tansu broker, embedded
tritonserver, Faust worker, actuator with its simulated PLC, chDB sink): the candidate's verdicts
are stored apart, the live verdicts and the gate are untouched, and stopping the shadow (SIGTERM,
then SIGKILL) never disturbs the line.

The models are tiny contract classifiers (`contract_models`) in a temporary repository: live
version 1 passes every unit, candidate version 2 rejects every unit, so any leak of a shadow
verdict into the line would show as a reject.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract_models import add_version, model_repository, own_triton
from support import eventually

from pipeline.analytics.run_report import build_report
from pipeline.analytics.shadow_compare import compare
from pipeline.clickhouse import ClickHouseClient
from pipeline.demo.run import pipeline_stack, wait_drained
from pipeline.demo.services import Services
from pipeline.embedded.process import free_port
from pipeline.gateway.publisher import FramePublisher, run_simulated_line
from pipeline.model import repository
from pipeline.model.deploy import TritonTarget
from pipeline.model.shadow import resolve
from pipeline.settings import PROJECT_ROOT, Settings
from streams.shadow import running_elsewhere

PRODUCT = "tablet-round-white-10mm"
CLASSIFIER = "tablet_round_white_10mm_classifier"
SHADOW = f"{CLASSIFIER}__shadow"


@pytest.fixture(scope="module")
def shadow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = model_repository(tmp_path_factory.mktemp("shadow-repo"), classifier=CLASSIFIER,
                            inspector="tablet_round_white_10mm_inspector")
    add_version(repo, CLASSIFIER, 1, review=0.3, reject=0.7, bias=0.2)  # live: passes everything
    add_version(repo, CLASSIFIER, 2, review=0.5, reject=0.5, bias=0.9)  # candidate: rejects everything
    return repo


@pytest.fixture(scope="module")
def shadow_triton(
    shadow_repo: Path, embedded_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    settings = embedded_settings.model_copy(update={
        "stream": embedded_settings.stream.model_copy(update={"product_models": {}})})
    with own_triton(settings, shadow_repo, tmp_path_factory.mktemp("shadow-triton")) as (settings, _):
        yield settings

@pytest.fixture(scope="module")
def line(
    embedded_settings: Settings, broker: str, shadow_triton: Settings
) -> Iterator[tuple[Settings, ClickHouseClient, Services]]:
    base, k = embedded_settings, embedded_settings.kafka
    suffix = uuid.uuid4().hex[:6]
    topics = {
        name: f"{getattr(k, name)}-shadow-{suffix}"
        for name in ("topic_frames", "topic_results", "topic_rejects", "topic_deadletter", "topic_truth",
                     "topic_actuations", "topic_shadow", "topic_gate_events")
    }
    settings = base.model_copy(
        update={
            "kafka": k.model_copy(update={"bootstrap_servers": broker} | topics),
            "triton": base.triton.model_copy(update={"url": TritonTarget.from_settings(shadow_triton).url}),
            "stream": base.stream.model_copy(
                update={"web_port": free_port(), "product_models": {}, "app_id": f"shadow-worker-{suffix}"}
            ),
            "services": base.services.model_copy(
                update={"sink_health_port": free_port(), "actuator_health_port": free_port(),
                        "sink_group": f"shadow-sink-{suffix}", "actuator_group": f"shadow-actuator-{suffix}"}
            ),
            "simulator": base.simulator.model_copy(update={"product": PRODUCT, "rate_per_s": 20.0, "seed": 5,
                                                           "defect_rate": 0.3}),
        }
    )
    with pipeline_stack(settings, workers=1) as stack:
        yield stack


class ShadowProcess:
    """`linesight models shadow` as the operator runs it: its own process, its stdout read live."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "models", "shadow", PRODUCT, *args],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.lines.put(text.rstrip())

    def said(self, fragment: str) -> bool:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return any(fragment in s for s in self.seen)

    def wait_for(self, fragment: str, timeout_s: float) -> None:
        eventually(lambda: self.said(fragment) or self.proc.poll() is not None, timeout_s, f"shadow says {fragment!r}")
        assert self.said(fragment), "\n".join(self.seen)


def _env(shadow_triton: Settings, line_settings: Settings) -> dict[str, str]:
    """What the operator's shell would hold: the line's broker and topics, the Triton's state
    folder (its model-control key; the shadow's audit records go to that folder's chDB)."""
    k, t = line_settings.kafka, shadow_triton.triton
    env = {key: v for key, v in os.environ.items() if not key.startswith("LINESIGHT_")}
    env |= {
        "LINESIGHT_STATE_DIR": str(shadow_triton.state_dir),
        "LINESIGHT_TRITON__MODEL_REPOSITORY": str(t.model_repository),
        "LINESIGHT_TRITON__EMBEDDED_GRPC_PORT": str(t.embedded_grpc_port),
        "LINESIGHT_TRITON__EMBEDDED_HTTP_PORT": str(t.embedded_http_port),
        "LINESIGHT_KAFKA__BOOTSTRAP_SERVERS": str(k.bootstrap_servers),
        "LINESIGHT_KAFKA__TOPIC_FRAMES": k.topic_frames,
        "LINESIGHT_KAFKA__TOPIC_SHADOW": k.topic_shadow,
        "LINESIGHT_STREAM__PRODUCT_MODELS": "{}",
        "LINESIGHT_AUDIT__PUBLISH_TIMEOUT_S": "0",
    }
    return env


def _shadow_served(target: TritonTarget) -> bool:
    """Triton serves the shadow classifier's version 2 (not in the repository index: its files
    came with the load request)."""
    try:
        return bool(target.client().is_model_ready(SHADOW, "2"))
    except Exception:  # noqa: BLE001 - unknown model
        return False


def _count(client: ClickHouseClient, sql: str, lot: str) -> int:
    return int(client.query(sql, {"lot": lot}).scalar() or 0)


@pytest.mark.timeout(420)
def test_shadow_beside_the_running_line(
    line: tuple[Settings, ClickHouseClient, Services], shadow_triton: Settings
) -> None:
    resolved, client, services = line
    db = resolved.clickhouse.database
    target = TritonTarget.from_settings(shadow_triton)
    live_config = repository.config_path(shadow_triton.triton.model_repository, CLASSIFIER).read_bytes()
    env = _env(shadow_triton, resolved)
    models = resolve(shadow_triton, PRODUCT, 2)
    lot = f"SHADOW-{uuid.uuid4().hex[:6]}"
    shadow_rows = f"SELECT count() FROM {db}.shadow_inspections FINAL WHERE lot = {{lot:String}}"
    live_rows = f"SELECT count() FROM {db}.inspections FINAL WHERE lot = {{lot:String}}"

    line_stop = threading.Event()
    publisher = FramePublisher(resolved)
    feeder = threading.Thread(target=run_simulated_line, args=(resolved, publisher, line_stop),
                              kwargs={"lot": lot}, daemon=True)
    feeder.start()
    try:
        eventually(lambda: _count(client, live_rows, lot) >= 10, 90, "live results before the shadow")

        # 1. A shadow of version 2, stopped with SIGTERM: loads, scores, unloads.
        first = ShadowProcess(env, "--version", "2", "--reason", "test: shadow v2")
        first.wait_for("shadow ready", 120)
        assert _shadow_served(target) and target.ready_versions(CLASSIFIER) == [1]
        # A second shadow of the same version while the first runs is refused (they would share
        # a group and a model).
        twice = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "models", "shadow", PRODUCT, "--version", "2",
             "--reason", "test: twice"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert twice.returncode == 1 and "is running" in twice.stderr, twice.stdout + twice.stderr
        assert _shadow_served(target)
        eventually(lambda: _count(client, shadow_rows, lot) >= 20 or first.proc.poll() is not None, 90,
                   "shadow verdicts stored apart")
        assert first.proc.poll() is None, first.said("") and "\n".join(first.seen)
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(60) == 0, "\n".join(first.seen)
        first.wait_for("shadow stopped", 10)
        assert any("unloaded" in s for s in first.seen if "shadow stopped" in s), first.seen
        assert not _shadow_served(target)

        # 2. A second shadow, killed with SIGKILL mid-run: the line goes on; --unload cleans up.
        second = ShadowProcess(env, "--version", "2", "--reason", "test: shadow killed")
        second.wait_for("shadow ready", 120)
        before = _count(client, shadow_rows, lot)
        eventually(lambda: _count(client, shadow_rows, lot) > before + 5, 90, "second shadow scoring")
        second.proc.kill()
        assert second.proc.wait(30) == -signal.SIGKILL
        killed_ns = time.time_ns()
        after_kill = (f"SELECT count() FROM {db}.inspections FINAL WHERE lot = {{lot:String}} "
                      f"AND toUnixTimestamp64Micro(capture_time) > {killed_ns // 1000}")
        eventually(lambda: _count(client, after_kill, lot) >= 20, 90, "live results after the shadow was killed")
        assert _shadow_served(target)  # left loaded by the kill: idle, nothing calls it
        # The killed member keeps the shadow's group alive as far as Tansu says (it never expires
        # it): --unload is refused until --force.
        assert running_elsewhere(resolved, models) is not None
        unload = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "models", "shadow", PRODUCT, "--version", "2", "--unload",
             "--force", "--reason", "test: clean up"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
            timeout=120,
        )
        assert unload.returncode == 0, unload.stdout + unload.stderr
        assert not _shadow_served(target)

        # 3. A shadow started again after the kill (--force: Tansu still shows the dead member)
        # joins the group, scores where the killed one stopped, and stops cleanly.
        third = ShadowProcess(env, "--version", "2", "--force", "--reason", "test: after the kill")
        third.wait_for("shadow ready", 120)
        before = _count(client, shadow_rows, lot)
        eventually(lambda: _count(client, shadow_rows, lot) > before + 5, 90, "third shadow scoring")
        third.proc.send_signal(signal.SIGTERM)
        assert third.proc.wait(60) == 0, "\n".join(third.seen)
        assert not _shadow_served(target)
    finally:
        line_stop.set()
        feeder.join(30)
        publisher.close()
    published = publisher.stats.published
    wait_drained(client, db, lot, published, services.stop_event, timeout_s=120)

    # The line as if no shadow had run: every unit one live verdict by version 1 (which passes
    # everything), every unit at the gate reconciled, no reject, nothing fail-safe.
    report = build_report(client, db, lot)
    assert report.published == published and report.every_unit_has_one_verdict, report.to_text()
    assert report.every_reject_fired and report.rejected == 0 and report.review == 0, report.to_text()
    assert report.failsafe_rejected == 0 and report.dead_lettered == 0, report.to_text()
    assert report.model_versions == [f"{CLASSIFIER}:1"], report.to_text()
    assert report.gate is not None and report.gate.every_unit_accounted, report.to_text()
    assert repository.config_path(shadow_triton.triton.model_repository, CLASSIFIER).read_bytes() == live_config

    # The candidate's verdicts, apart: every one a reject by version 2 at its own thresholds.
    rows = client.query(
        f"""SELECT verdict, model_version, live_version, reject_threshold, count() FROM {db}.shadow_inspections FINAL
            WHERE lot = {{lot:String}} GROUP BY ALL""", {"lot": lot},
    ).rows
    assert [(v, int(mv), int(lv), round(t, 4)) for v, mv, lv, t, _ in rows] == [("reject", 2, 1, 0.5)]

    # Compare: all disagreements are "candidate would remove, live passed"; against truth the
    # candidate finds every defect and removes every good unit.
    result = compare(client, db, PRODUCT, CLASSIFIER)
    n = result.units
    assert n == int(rows[0][-1]) and n >= 25, result.to_text()
    assert result.candidate_version == 2 and result.agreed == 0 and result.table["pass"]["reject"] == n
    assert result.candidate_removed_live_pass_n == n and result.candidate_pass_live_removed_n == 0
    t = result.truth
    assert t.defective + t.good == n and t.defective > 0 and t.good > 0, result.to_text()
    assert (t.live_detected, t.candidate_detected, t.live_false_rejects, t.candidate_false_rejects) == (
        0, t.defective, 0, t.good)
    text = result.to_text()
    assert "agreement                      0.00 %" in text and "review decisions: none recorded" in text
    assert result.reviews.good + result.reviews.defect + result.reviews.cannot_decide == 0
    assert json.loads(result.to_json())["truth"]["candidate_detection"] == 1.0

    # The audit trail of the shadow's own state folder: start, stop, start (killed: no stop), unload.
    audit = subprocess.run(
        [sys.executable, "-c",
         "from pipeline.clickhouse import connect; from pipeline.settings import Settings; s = Settings(); "
         "c = connect(s); print([r[0] for r in c.query(f'SELECT action FROM {s.clickhouse.database}.audit_records "
         "WHERE action LIKE \\'model.shadow.%\\' ORDER BY time, seq').rows])"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert audit.returncode == 0, audit.stderr
    assert audit.stdout.strip().splitlines()[-1] == str(
        ["model.shadow.start", "model.shadow.stop", "model.shadow.start", "model.shadow.unload",
         "model.shadow.start", "model.shadow.stop"])
