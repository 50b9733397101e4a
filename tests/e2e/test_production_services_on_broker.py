"""`linesight alerts` and `linesight dashboard` as their own services on the embedded broker: the
alerts command as a child process (consumes, raises, stops on SIGTERM) and the dashboard reading
the alert service's state and acknowledging through it. The refusals and the API alone are
tests/unit/test_production_services.py."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from alerts_api import TOKEN, NullPublisher, get, result
from dashboard_site import Site, call, login
from pydantic import SecretStr
from support import eventually

from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.service import AlertService, serve_alerts_api
from pipeline.auth.users import UserStore
from pipeline.clickhouse import ChdbClient
from pipeline.core.health import HealthState
from pipeline.core.times import now_ns
from pipeline.dashboard import stack
from pipeline.dashboard.app import DashboardServer
from pipeline.demo.services import child_env, linesight_command
from pipeline.embedded.process import free_port
from pipeline.kafka.clients import flush_or_raise, make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings

TOPICS = ("topic_frames", "topic_results", "topic_heartbeats", "topic_alerts")


def poll(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    eventually(check, timeout_s, what, poll_s=0.1)



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


def test_dashboard_serves_the_alert_services_state_and_acknowledges_through_it(
    chdb_client: ChdbClient, broker: str, embedded_settings: Settings, tmp_path: Path
) -> None:
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
