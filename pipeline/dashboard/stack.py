"""Wiring of the alert service and the dashboard: into the stack process (`linesight up`/`demo`,
`start_alerts_and_dashboard`), or as the production service `linesight dashboard` (`run_dashboard`).

With embedded chDB only the stack process may open the data directory, so there the dashboard
(users, sessions, audit trail) runs next to the sink and reads the alert engine in memory. In
production it connects to the ClickHouse server and reads the alert service (`linesight alerts`)
over its API. Both build the app with `build_dashboard`.
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
from pipeline.alerts.record import AlertRecord
from pipeline.alerts.service import alert_config, start_alert_service
from pipeline.audit.publish import AuditPublisher, BestEffortPublisher
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, LoginPolicy
from pipeline.auth.sessions import SessionStore
from pipeline.auth.users import UserStore
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.health import HealthState
from pipeline.core.times import now_ns
from pipeline.dashboard.app import Dashboard, DashboardServer
from pipeline.dashboard.localize import triton_localizer
from pipeline.dashboard.remote import RemoteAlerts, TritonVersions
from pipeline.embedded.process import ServiceStartError
from pipeline.kafka.clients import RenewingProducer, client_config
from pipeline.recipes.lookup import review_spec_for
from pipeline.review.desk import ReviewDesk
from pipeline.review.frames import BrokerFrames
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


class DashboardRefused(RuntimeError):
    """`linesight dashboard` cannot run with these settings (the message says why and what to do)."""


def health_probe(
    settings: Settings, client: ClickHouseClient, engine: AlertEngine | RemoteAlerts, worker_urls: list[str],
    states: list[HealthState], remote: dict[str, str] | None = None,
) -> Callable[[], dict[str, Any]]:
    """Broker, Triton (as the workers see it), workers, ClickHouse, PLC (as the actuator sees it),
    the in-process services (`states`) and other services by health URL (`remote`: name -> base
    URL); each {"ok": bool, "detail": str}. Without `worker_urls` (replicas in production) the
    workers are judged by their heartbeats."""
    admin = AdminClient(client_config(settings.kafka) | {"logger": logging.getLogger("linesight.dashboard.kafka")})
    svc = settings.services
    actuator_url = f"{svc.actuator_url or f'http://127.0.0.1:{svc.actuator_health_port}'}/readyz"

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
        if worker_urls:
            workers = [(_http_json(u + "/readyz")[0], u) for u in worker_urls]
            out["workers"] = {"ok": all(ok for ok, _ in workers),
                              "detail": ", ".join(f"{u}: {'ready' if ok else 'NOT READY'}" for ok, u in workers)}
        else:
            out["workers"] = {"ok": bool(fresh), "detail": f"{len(fresh)} with a fresh heartbeat"
                              + (f", {len(snap) - len(fresh)} silent" if len(snap) > len(fresh) else "")}
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
        for name, url in (remote or {}).items():
            ok, body = _http_json(url.rstrip("/") + "/readyz")
            out[name] = {"ok": ok, "detail": str(body.get("error", "")) if not ok else ""}
        return out

    return probe


def triton_versions(settings: Settings) -> TritonVersions:
    """Ready classifier versions as `linesight models` reads them (pipeline/model/deploy.py)."""
    from pipeline.model.deploy import TritonTarget

    return TritonVersions(TritonTarget.from_settings(settings).ready_versions).start()


def build_dashboard(
    settings: Settings, client: ClickHouseClient, engine: AlertEngine | RemoteAlerts,
    acknowledge: Callable[[str, str], AlertRecord], probe: Callable[[], dict[str, Any]],
    versions: TritonVersions | None = None,
) -> DashboardServer:
    """The one way to start the dashboard: users, sessions and audit trail in `client`'s
    ClickHouse, acknowledgements audited (and published to the audit topic when Kafka takes them)."""
    db = settings.clickhouse.database
    audit_publisher: AuditPublisher | None = None
    # Submitting to the audit service (production), the dashboard's actions wait for their records:
    # one that cannot be audited does not happen. Appending itself, its records' topic copy is best effort.
    if settings.audit.append_via == "direct":
        try:
            conf: dict[str, Any] = {"message.timeout.ms": max(1000, int(settings.audit.publish_timeout_s * 1000))}
            audit_publisher = BestEffortPublisher(settings, RenewingProducer(
                settings.kafka, "linesight-dashboard-audit",
                logger=logging.getLogger("linesight.dashboard.librdkafka"), **conf,
            ))
        except Exception as exc:  # noqa: BLE001 - ClickHouse stays the record
            log.warning("dashboard audit records go to ClickHouse only: %s", exc)
    trail = AuditTrail.from_settings(settings, client, audit_publisher)
    svc = settings.services
    guard = Guard(UserStore(client, db), SessionStore(client, db), trail, settings.audit.session_ttl_s,
                  LoginPolicy(svc.login_max_failures, svc.login_max_failures_per_source, svc.login_failure_window_s,
                              svc.login_lockout_s, svc.refusal_audit_window_s))
    recipes_dir = settings.stream.recipes_dir
    review = ReviewDesk(client, db, trail, guard, lambda ref: review_spec_for(recipes_dir, ref)[0], settings.site)
    try:  # every station's frame of a review unit, read back while the frames topic keeps it
        frames: BrokerFrames | None = BrokerFrames(settings.kafka)
    except Exception as exc:  # noqa: BLE001 - the review station then shows the kept JPEGs only
        log.warning("review station: frames are not read back from the broker: %s", exc)
        frames = None
    dash = Dashboard(engine, guard, acknowledge, probe, secure_cookie=svc.dashboard_secure_cookie,
                     versions=versions, localizer=triton_localizer(settings), review=review, frames=frames)
    try:
        server = DashboardServer(dash, svc.dashboard_host, svc.dashboard_port, svc.dashboard_metrics_port,
                                 svc.health_host).start()
    except RuntimeError as exc:
        raise ServiceStartError("dashboard", f"{exc} (set LINESIGHT_SERVICES__DASHBOARD_PORT)") from exc
    log.info("dashboard at %s", server.url)
    return server


def start_alerts_and_dashboard(
    settings: Settings, client: ClickHouseClient, stop: threading.Event, worker_urls: list[str],
    extra_states: list[HealthState], threads: list[threading.Thread],
) -> tuple[HealthState, DashboardServer]:
    """In the stack process: the alert service (a thread) and the dashboard reading its engine;
    returns the alert service's health state (await `ready` like the sink's) and the server
    (stop it on exit)."""
    service, health = start_alert_service(settings, stop, threads)
    probe = health_probe(settings, client, service.engine, worker_urls, [health, *extra_states])
    return health, build_dashboard(settings, client, service.engine, service.acknowledge, probe,
                                   triton_versions(settings))


def production_refusal(settings: Settings) -> str | None:
    """Why `linesight dashboard` cannot run with `settings` (None when it can)."""
    svc = settings.services
    if not settings.clickhouse.url:
        return ("no ClickHouse server configured (LINESIGHT_CLICKHOUSE__URL): with embedded chDB only one "
                "process may open the data directory, so the dashboard runs inside the stack — start "
                "`linesight up` (it prints the dashboard URL)")
    if not settings.kafka.bootstrap_servers:
        return "no Kafka broker configured: set LINESIGHT_KAFKA__BOOTSTRAP_SERVERS (e.g. kafka:9092)"
    if not svc.alerts_url:
        return "no alert service configured: set LINESIGHT_SERVICES__ALERTS_URL (e.g. http://alerts:16072)"
    if not svc.resolved_alerts_api_token():
        return ("no alert API token: set LINESIGHT_SERVICES__ALERTS_API_TOKEN_FILE (the same secret "
                "`linesight alerts` reads)")
    return None


def run_dashboard(settings: Settings, stop: threading.Event, client: ClickHouseClient | None = None,
                  started: Callable[[DashboardServer], None] | None = None) -> None:
    """`linesight dashboard`: serve until `stop`, against the ClickHouse server (users, sessions,
    audit) and the alert service's API. Raises DashboardRefused when the settings cannot work."""
    why = production_refusal(settings)
    if why:
        raise DashboardRefused(why)
    svc = settings.services
    assert svc.alerts_url is not None
    owned = client is None
    if client is None:
        from pipeline.clickhouse import connect

        client = connect(settings)
    remote = RemoteAlerts(svc.alerts_url, svc.resolved_alerts_api_token(), alert_config(settings)).start()
    versions = triton_versions(settings)
    remote_health = {"alerts": svc.alerts_url, "sink": svc.sink_url or f"http://127.0.0.1:{svc.sink_health_port}"}
    try:
        server = build_dashboard(settings, client, remote, remote.acknowledge,
                                 health_probe(settings, client, remote, [], [], remote_health), versions)
        try:
            if started is not None:
                started(server)
            stop.wait()
        finally:
            server.stop()
    finally:
        remote.stop()
        versions.stop()
        if owned:
            client.close()
