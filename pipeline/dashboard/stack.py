"""Wiring of the alert service and the dashboard into the stack process (`linesight up`/`demo`).

With embedded chDB only this process may open the data directory, so the dashboard (users,
sessions, audit trail) runs here, next to the sink, on ``services.dashboard_host:port``.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from confluent_kafka.admin import AdminClient

from pipeline.alerts.engine import AlertEngine
from pipeline.alerts.service import AlertPublisher, AlertService, alert_config, run_alert_service
from pipeline.audit.publish import AuditPublisher
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard
from pipeline.auth.sessions import SessionStore
from pipeline.auth.users import UserStore
from pipeline.clickhouse import ClickHouseClient
from pipeline.dashboard.app import Dashboard, DashboardServer
from pipeline.embedded.process import ServiceStartError
from pipeline.health import HealthState
from pipeline.kafka import client_config, make_producer
from pipeline.messages import now_ns
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def _http_json(url: str) -> tuple[bool, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=1.5) as r:
            return r.status == 200, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return False, json.loads(e.read() or b"{}")
        except ValueError:
            return False, {"error": f"HTTP {e.code}"}
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, {"error": str(e)}


def health_probe(
    settings: Settings, client: ClickHouseClient, engine: AlertEngine, worker_urls: list[str],
    states: list[HealthState],
) -> Callable[[], dict[str, Any]]:
    """Broker, Triton (as the workers see it), workers, ClickHouse, PLC (as the actuator sees it),
    and the in-process services; each {"ok": bool, "detail": str}."""
    admin = AdminClient(client_config(settings.kafka) | {"logger": logging.getLogger("linesight.dashboard.kafka")})
    actuator_url = f"http://127.0.0.1:{settings.services.actuator_health_port}/readyz"

    def probe() -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            topics = admin.list_topics(timeout=1.5).topics
            out["broker"] = {"ok": True, "detail": f"{len(topics)} topics"}
        except Exception as exc:  # noqa: BLE001 - shown on the page
            out["broker"] = {"ok": False, "detail": str(exc)}
        snap = engine.snapshot(now_ns())["workers"]
        fresh = {s: w for s, w in snap.items() if w["age_s"] < engine.config.heartbeat_stale_s}
        out["triton"] = {"ok": bool(fresh) and all(w["triton_ready"] for w in fresh.values()),
                         "detail": ", ".join(f"{s}: {'ready' if w['triton_ready'] else 'not ready'}"
                                             for s, w in fresh.items()) or "no worker heartbeat"}
        workers = [(_http_json(u + "/readyz")[0], u) for u in worker_urls]
        out["workers"] = {"ok": bool(workers) and all(ok for ok, _ in workers),
                          "detail": ", ".join(f"{u}: {'ready' if ok else 'NOT READY'}" for ok, u in workers)}
        try:
            client.query("SELECT 1")
            out["clickhouse"] = {"ok": True, "detail": client.backend}
        except Exception as exc:  # noqa: BLE001
            out["clickhouse"] = {"ok": False, "detail": str(exc)}
        ok, act = _http_json(actuator_url)
        plc_alarms = [a for a in act.get("alarms", []) if "plc" in str(a)]
        out["plc"] = {"ok": ok and not plc_alarms,
                      "detail": "; ".join(plc_alarms) or act.get("error", "") or ("fail-safe" if act.get("fail_safe") else "")}
        out["actuator"] = {"ok": ok and not act.get("fail_safe"), "detail": ", ".join(act.get("alarms", []))}
        for st in states:
            s = st.snapshot()
            out[st.service] = {"ok": bool(s["ready"]), "detail": s.get("error", "")}
        return out

    return probe


def start_alerts_and_dashboard(
    settings: Settings, client: ClickHouseClient, stop: threading.Event, worker_urls: list[str],
    extra_states: list[HealthState], threads: list[threading.Thread],
) -> tuple[HealthState, DashboardServer]:
    """Start the alert service (a thread) and the dashboard; returns the alert service's health
    state (await `ready` like the sink's) and the server (stop it on exit)."""
    engine = AlertEngine(alert_config(settings), lines=list(settings.lines))
    service = AlertService(settings, engine, AlertPublisher(settings))
    health = HealthState("alerts")

    def run() -> None:
        try:
            run_alert_service(service, stop, health)
        except Exception:  # noqa: BLE001 - reported; the stack stops on a dead alert service
            log.exception("alert service stopped with an error")
            health.tick(error="alert service stopped with an error; see log")
            stop.set()

    thread = threading.Thread(target=run, name="alerts", daemon=True)
    thread.start()
    threads.append(thread)
    db = settings.clickhouse.database
    try:
        audit_publisher: AuditPublisher | None = AuditPublisher(settings, make_producer(
            settings.kafka, "linesight-dashboard-audit", logger=logging.getLogger("linesight.dashboard.librdkafka"),
            **{"message.timeout.ms": max(1000, int(settings.audit.publish_timeout_s * 1000))},
        ))
    except Exception as exc:  # noqa: BLE001 - ClickHouse stays the record
        log.warning("dashboard audit records go to ClickHouse only: %s", exc)
        audit_publisher = None
    trail = AuditTrail.from_settings(settings, client, audit_publisher)
    guard = Guard(UserStore(client, db), SessionStore(client, db), trail, settings.audit.session_ttl_s)
    dash = Dashboard(engine, guard, service.acknowledge,
                     health_probe(settings, client, engine, worker_urls, [health, *extra_states]))
    try:
        server = DashboardServer(dash, settings.services.dashboard_host, settings.services.dashboard_port).start()
    except RuntimeError as exc:
        raise ServiceStartError("dashboard", f"{exc} (set LINESIGHT_SERVICES__DASHBOARD_PORT)") from exc
    log.info("dashboard at %s", server.url)
    return health, server
