"""`linesight alerts` and `linesight dashboard` as their own services (docker-compose): the
refusals, the alert service's API, and the dashboard reading it, with Triton's live versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from support import eventually

from pipeline import cli
from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.service import AlertService, serve_alerts_api
from pipeline.auth.users import UserStore
from pipeline.clickhouse import ChdbClient
from pipeline.dashboard import stack
from pipeline.dashboard.app import DashboardServer
from pipeline.dashboard.remote import RemoteAlerts, TritonVersions
from pipeline.embedded.process import free_port
from pipeline.health import HealthState
from pipeline.kafka import flush_or_raise, make_producer
from pipeline.messages import InspectionResult, now_ns
from pipeline.runtime import child_env, linesight_command
from pipeline.settings import Settings
from pipeline.topics import ensure_topics

TOKEN = "test-alert-api-token-0123456789"
TOPICS = ("topic_frames", "topic_results", "topic_heartbeats", "topic_alerts")


def poll(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    eventually(check, timeout_s, what, poll_s=0.1)


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def result(unit: str, line: str, verdict: str = "reject", version: str = "3") -> InspectionResult:
    t = now_ns()
    return InspectionResult(unit, line, "cam-1", "tablet-a", "lot", verdict, "model", True,
                            "crack" if verdict == "reject" else "", 0.9, 0.5, "tablet_classifier", version,
                            t, t, t, "w")


class NullPublisher:
    """The alert publisher without a broker (the API tests are about the HTTP side)."""

    def __init__(self) -> None:
        self.published: list = []

    def publish(self, records, timeout_s: float = 30.0) -> None:  # noqa: ANN001
        self.published += list(records)


# --------------------------------------------------------------------------- refusals


def test_dashboard_refuses_embedded_chdb_and_points_to_up(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for name in [n for n in os.environ if n.startswith("LINESIGHT_")]:
        monkeypatch.delenv(name)
    assert cli.main(["dashboard"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("linesight dashboard: error:") and "`linesight up`" in err and "chDB" in err
    assert "Traceback" not in err

    monkeypatch.setenv("LINESIGHT_CLICKHOUSE__URL", "http://clickhouse:8123")
    assert cli.main(["dashboard"]) == 1
    assert "LINESIGHT_KAFKA__BOOTSTRAP_SERVERS" in capsys.readouterr().err

    monkeypatch.setenv("LINESIGHT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    assert cli.main(["dashboard"]) == 1
    assert "LINESIGHT_SERVICES__ALERTS_URL" in capsys.readouterr().err

    monkeypatch.setenv("LINESIGHT_SERVICES__ALERTS_URL", "http://alerts:16072")
    assert cli.main(["dashboard"]) == 1
    assert "LINESIGHT_SERVICES__ALERTS_API_TOKEN_FILE" in capsys.readouterr().err


def test_both_commands_are_in_the_cli() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["alerts"]).func is cli.cmd_alerts
    assert parser.parse_args(["dashboard"]).func is cli.cmd_dashboard


# --------------------------------------------------------------------------- the alert service's API


def test_alerts_api_needs_the_token_and_serves_state_frames_and_acks() -> None:
    engine = AlertEngine(AlertConfig(run_length=3))
    publisher = NullPublisher()
    service = AlertService(Settings(), engine, publisher)  # type: ignore[arg-type]
    health = HealthState("alerts")
    health.set_ready(True)
    port = free_port()
    server = serve_alerts_api(service, health, port, TOKEN, host="127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    try:
        for i in range(3):
            engine.on_result(result(f"u{i}", "line-9"), now_ns())
        assert get(base + "/readyz")[0] == 200                       # health stays open
        assert get(base + "/state")[0] == 401                        # the rest needs the token
        assert get(base + "/state", "wrong-token")[0] == 401
        remote = RemoteAlerts(base, TOKEN, engine.config)
        remote.refresh()
        assert remote.error == ""
        alert = next(a for a in remote.snapshot(0)["alerts"] if a["kind"] == "reject_run")
        assert remote.reject_image("u0") is None                     # no frame kept: 404, not an error
        rec = remote.acknowledge(alert["alert_id"], "olga")
        assert rec.acknowledged_by == "olga" and publisher.published[-1].acknowledged_by == "olga"
        with pytest.raises(ValueError):
            remote.acknowledge(alert["alert_id"], "olga")
        with pytest.raises(KeyError):
            remote.acknowledge("line-9:nope:1", "olga")
        forged = RemoteAlerts(base, "forged", engine.config)
        with pytest.raises(RuntimeError, match="401"):
            forged.acknowledge(alert["alert_id"], "mallory")
    finally:
        server.shutdown()
        server.server_close()
    unconfigured = serve_alerts_api(service, health, port := free_port(), "", host="127.0.0.1")
    try:
        assert get(f"http://127.0.0.1:{port}/state", "")[0] == 403  # no token configured: closed
    finally:
        unconfigured.shutdown()
        unconfigured.server_close()


def test_alerts_command_starts_consumes_and_stops_on_sigterm(broker: str, embedded_settings: Settings,
                                                             tmp_path: Path) -> None:
    prefix = f"svc{uuid.uuid4().hex[:8]}"
    k = embedded_settings.kafka
    settings = embedded_settings.model_copy(update={"kafka": k.model_copy(update={
        "bootstrap_servers": broker, **{f: f"{prefix}.{getattr(k, f)}" for f in TOPICS}})})
    ensure_topics(settings)
    token_file = tmp_path / "alerts_api_token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    env = child_env(settings) | {
        "LINESIGHT_SERVICES__ALERTS_HEALTH_PORT": str(port),
        "LINESIGHT_SERVICES__ALERTS_GROUP": f"{prefix}-alerts",
        "LINESIGHT_SERVICES__ALERTS_RUN_LENGTH": "3",
        "LINESIGHT_SERVICES__ALERTS_API_TOKEN_FILE": str(token_file),
    }
    log = (tmp_path / "alerts.log").open("w")
    proc = subprocess.Popen([*linesight_command(), "alerts"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        poll("alert service ready", lambda: get(base + "/readyz")[0] == 200, 60.0)
        producer = make_producer(settings.kafka, "test-results")
        for i in range(3):
            producer.produce(settings.kafka.topic_results, key=b"line-5", value=result(f"u{i}", "line-5").to_json())
        flush_or_raise(producer, 10)

        def raised() -> bool:
            code, body = get(base + "/state", TOKEN)
            return code == 200 and any(a["kind"] == "reject_run" and a["line"] == "line-5"
                                       for a in json.loads(body)["alerts"])

        poll("reject_run alert in the service's state", raised)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=45) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_serves_the_alert_services_state_and_acknowledges_through_it(
    chdb_client: ChdbClient, broker: str, embedded_settings: Settings, tmp_path: Path
) -> None:
    from test_dashboard import Site, call, login

    db = f"prod_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    UserStore(chdb_client, db).add("olga", "operator", "olga-pass-123", "test")
    engine = AlertEngine(AlertConfig(run_length=3))
    service = AlertService(embedded_settings, engine, NullPublisher())  # type: ignore[arg-type]
    health = HealthState("alerts")
    health.set_ready(True)
    api_port = free_port()
    api = serve_alerts_api(service, health, api_port, TOKEN, host="127.0.0.1")
    for i in range(3):
        engine.on_result(result(f"u{i}", "line-3"), now_ns())
    s = embedded_settings
    settings = s.model_copy(update={
        "kafka": s.kafka.model_copy(update={"bootstrap_servers": broker}),
        "clickhouse": s.clickhouse.model_copy(update={"url": "http://clickhouse.invalid:8123", "database": db}),
        "services": s.services.model_copy(update={
            "alerts_url": f"http://127.0.0.1:{api_port}", "alerts_api_token": SecretStr(TOKEN),
            "dashboard_port": free_port(), "dashboard_secure_cookie": False}),
        "state_dir": tmp_path,
    })
    stop = threading.Event()
    started: list[DashboardServer] = []
    thread = threading.Thread(target=stack.run_dashboard, args=(settings, stop, chdb_client, started.append),
                              daemon=True)
    thread.start()
    try:
        poll("dashboard listening", lambda: not thread.is_alive() or (
            bool(started) and get(started[0].url + "login")[0] == 200))
        assert thread.is_alive(), "run_dashboard stopped"
        site = Site(started[0].url, engine, chdb_client, db, [])
        op, csrf = login(site)

        def shows_alert() -> bool:
            status, _, body = call(op, site.url + "api/state")
            return status == 200 and any(a["kind"] == "reject_run" for a in json.loads(body)["alerts"])

        poll("the alert service's alert on the dashboard", shows_alert)
        alert_id = next(a.alert_id for a in engine.book.all() if a.kind == "reject_run")
        status, _, _ = call(op, site.url + f"alerts/{alert_id}/ack", {"csrf": csrf},
                            headers={"Accept": "application/json"})
        assert status == 200
        assert engine.book.by_id[alert_id].acknowledged_by == "olga"  # acknowledged in the alert service
        actions = [r[0] for r in chdb_client.query(f"SELECT action FROM {db}.audit_records").rows]
        assert "alert.acknowledge" in actions
    finally:
        stop.set()
        thread.join(timeout=15)
        api.shutdown()
        api.server_close()
    assert not thread.is_alive()


def test_model_live_comes_from_triton_and_falls_back_to_the_results() -> None:
    answers: dict[str, list[int]] = {"tablet_classifier": [2, 4]}

    def ready_versions(model: str) -> list[int]:
        if model not in answers:
            raise ConnectionError("Triton unreachable")
        return answers[model]

    versions = TritonVersions(ready_versions)
    models = {"tablet-a": "tablet_classifier:3", "capsule-b": "capsule_classifier:7"}
    assert versions.overlay(models) == models            # nothing asked yet: the results' versions
    versions.refresh()
    assert versions.overlay(models) == {"tablet-a": "tablet_classifier:4", "capsule-b": "capsule_classifier:7"}
    answers.clear()                                        # Triton gone: back to the last results
    versions.refresh()
    assert versions.overlay(models) == models
