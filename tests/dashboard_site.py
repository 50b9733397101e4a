"""The dashboard as the tests drive it: a `Site` (dashboard server on a fresh chDB database with an
operator and an admin, fed by an `AlertEngine` directly) and an HTTP client that logs in and
keeps its cookie. Used by tests/unit/test_dashboard.py and the e2e dashboard tests."""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard
from pipeline.auth.sessions import SessionStore
from pipeline.auth.users import UserStore
from pipeline.clickhouse import ChdbClient
from pipeline.core.times import now_ns
from pipeline.dashboard.app import Dashboard, DashboardServer
from pipeline.embedded.process import free_port
from pipeline.recipes.schema import ReviewSpec
from pipeline.review.desk import ReviewDesk


@dataclass
class Site:
    url: str
    engine: AlertEngine
    client: ChdbClient
    db: str
    acked: list[tuple[str, str]]
    dash: Dashboard | None = None


def make_site(chdb_client: ChdbClient, tmp_path: Path, config: AlertConfig | None = None
              ) -> tuple[Site, DashboardServer]:
    db = f"dash_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    users = UserStore(chdb_client, db)
    users.add("olga", "operator", "olga-pass-123", "test")
    users.add("adam", "admin", "adam-pass-123", "test")
    trail = AuditTrail(chdb_client, db, state_dir=tmp_path)
    guard = Guard(users, SessionStore(chdb_client, db), trail, session_ttl_s=600)
    engine = AlertEngine(config or AlertConfig(interval_s=1.0, run_length=6, missing_after_s=3.0,
                                                 pchart_min_baseline=3))
    acked: list[tuple[str, str]] = []

    def acknowledge(alert_id: str, user: str):  # noqa: ANN202 - the alert service's role in the stack
        acked.append((alert_id, user))
        return engine.acknowledge(alert_id, user, now_ns())

    def health() -> dict:
        return {"broker": {"ok": True}, "triton": {"ok": True}, "workers": {"ok": True},
                "clickhouse": {"ok": True}, "plc": {"ok": True}}

    review = ReviewDesk(chdb_client, db, trail, guard, lambda ref: ReviewSpec())
    dash = Dashboard(engine, guard, acknowledge, health, sse_interval_s=0.5, health_interval_s=1.0, review=review)
    server = DashboardServer(dash, "127.0.0.1", free_port()).start()
    return Site(server.url, engine, chdb_client, db, acked, dash), server


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return None


def opener(jar: http.cookiejar.CookieJar | None = None, follow: bool = False) -> urllib.request.OpenerDirector:
    handlers: list = [urllib.request.HTTPCookieProcessor(jar or http.cookiejar.CookieJar())]
    if not follow:
        handlers.append(NoRedirect())
    return urllib.request.build_opener(*handlers)


def call(op: urllib.request.OpenerDirector, url: str, data: dict | None = None,
         headers: dict | None = None) -> tuple[int, dict, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with op.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode(errors="replace")


def login(site: Site, user: str = "olga", password: str = "olga-pass-123") -> tuple[urllib.request.OpenerDirector, str]:
    jar = http.cookiejar.CookieJar()
    op = opener(jar)
    status, headers, _ = call(op, site.url + "login", {"username": user, "password": password})
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    status, _, page = call(op, site.url)
    assert status == 200 and "LineSight dashboard" in page
    csrf = page.split("id=csrf value='")[1].split("'")[0]
    return op, csrf


def audit_actions(site: Site) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in site.client.query(
        f"SELECT action, user, subject FROM {site.db}.audit_records ORDER BY seq").rows]
