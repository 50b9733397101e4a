"""The dashboard over HTTP: authentication, cookie flags, CSRF, acknowledgement in the audit trail."""

from __future__ import annotations

import io
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_feed import SimulatedFeed
from dashboard_site import Site, audit_actions, call, login, make_site, opener
from PIL import Image
from support import scrape

from pipeline.clickhouse import ChdbClient
from pipeline.core.times import now_ns
from pipeline.dashboard.app import DashboardServer
from pipeline.dashboard.localize import Localizer, LocalizeUnavailable, TritonScorer
from pipeline.embedded.process import free_port


@pytest.fixture()
def site(chdb_client: ChdbClient, tmp_path: Path) -> Iterator[Site]:
    s, server = make_site(chdb_client, tmp_path)
    try:
        yield s
    finally:
        server.stop()


def test_unauthenticated_requests_are_refused(site: Site) -> None:
    anon = opener()
    status, headers, _ = call(anon, site.url, headers={"Accept": "text/html"})
    assert status == 302 and headers["Location"] == "/login"
    for path in ("api/state", "events", "rejects/x"):
        assert call(anon, site.url + path)[0] == 401
    assert call(anon, site.url + "alerts/x/ack", {"csrf": "x"})[0] == 403  # a POST without a session: audited
    assert call(anon, site.url + "login")[0] == 200
    assert call(anon, site.url + "static/dashboard.css")[0] == 200
    forged = opener(follow=False)
    status, _, _ = call(forged, site.url + "api/state", headers={"Cookie": "ls_session=forged"})
    assert status == 401
    status, _, page = call(anon, site.url + "login", {"username": "olga", "password": "wrong"})
    assert status == 401 and "wrong password" in page.lower()
    assert ("access.refused", "olga", "127.0.0.1") in audit_actions(site)  # subject: the source


def test_acknowledge_needs_csrf_and_permission_and_is_audited(site: Site) -> None:
    (rec,) = site.engine.book.set("line-1", "reject_run", True, now_ns(), "critical", "8 consecutive rejects", 8)
    op, csrf = login(site)
    ack_url = site.url + f"alerts/{urllib.parse.quote(rec.alert_id)}/ack"
    assert call(op, ack_url, {"csrf": "0" * 64})[0] == 403
    assert call(op, ack_url, {})[0] == 403
    assert call(op, ack_url, {"csrf": csrf}, {"Origin": "http://evil.example"})[0] == 403
    assert site.acked == []
    refused = [a for a in audit_actions(site) if a[0] == "access.refused"]
    assert len(refused) == 3 and all(a[1] == "olga" and a[2] == rec.alert_id for a in refused)
    admin_op, admin_csrf = login(site, "adam", "adam-pass-123")
    status, _, text = call(admin_op, ack_url, {"csrf": admin_csrf})
    assert status == 403 and "may not alarm.acknowledge" in text
    status, _, _ = call(op, ack_url, {"csrf": csrf}, {"Accept": "application/json"})
    assert status == 200 and site.acked == [(rec.alert_id, "olga")]
    assert site.engine.book.by_id[rec.alert_id].acknowledged_by == "olga"
    assert ("alert.acknowledge", "olga", rec.alert_id) in audit_actions(site)
    assert call(op, ack_url, {"csrf": csrf})[0] == 409  # twice: conflict
    assert call(op, site.url + "alerts/nope/ack", {"csrf": csrf})[0] == 404
    status, _, state = call(op, site.url + "api/state")
    assert status == 200 and '"acknowledged_by": "olga"' in state


def test_logout_revokes_the_session(site: Site) -> None:
    op, csrf = login(site)
    assert call(op, site.url + "logout", {"csrf": "bad"})[0] == 403
    assert call(op, site.url + "logout", {"csrf": csrf})[0] == 303
    assert call(op, site.url + "api/state")[0] == 401


def test_reject_heatmap_needs_login_and_triton_and_is_cached(site: Site) -> None:
    feed = SimulatedFeed(site.engine)
    feed.inject_burst(1)
    feed.one()
    (kept,) = site.engine.snapshot(now_ns())["rejects"]
    unit = urllib.parse.quote(kept["unit_id"])
    url = site.url + f"rejects/{unit}/heatmap.png"
    assert call(opener(), url)[0] == 401
    op, _ = login(site)
    assert call(op, site.url + "rejects/nope/heatmap.png")[0] == 404
    status, _, text = call(op, url)  # this dashboard has no Triton
    assert status == 503 and "Triton" in text
    assert site.dash is not None
    site.dash.localizer = Localizer(lambda product: TritonScorer(f"127.0.0.1:{free_port()}", 3.0).for_model(
        "tablet_inspector"))
    status, _, text = call(op, url)  # Triton configured but down
    assert status == 503 and "heat map unavailable: Triton" in text

    calls: list[tuple[str, int]] = []

    def scorer_for(product: str):  # noqa: ANN202
        def score(images: list[bytes]) -> list[float]:
            calls.append((product, len(images)))
            if product != "tablet-round-white-10mm":
                raise LocalizeUnavailable("no model")
            return [0.9] + [0.9 - 0.8 * (k == 7) for k in range(len(images) - 1)]  # cell (1, 1) matters
        return score

    site.dash.localizer = Localizer(scorer_for, grid=6)
    for _ in range(2):
        req = urllib.request.Request(url)
        with op.open(req, timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/png"
            png = Image.open(io.BytesIO(r.read()))
    frame, _ = site.engine.reject_image(kept["unit_id"])
    assert png.format == "PNG" and png.size == Image.open(io.BytesIO(frame)).size
    assert calls == [("tablet-round-white-10mm", 37)]  # scored once, then cached


def test_failed_logins_lock_the_name_with_429(site: Site) -> None:
    assert site.dash is not None
    policy, anon = site.dash.guard.policy, opener()
    statuses = [call(anon, site.url + "login", {"username": "mallory", "password": f"guess-{i}"})[0]
                for i in range(policy.max_failures + 1)]
    assert statuses == [401] * policy.max_failures + [429]
    status, headers, page = call(anon, site.url + "login", {"username": "mallory", "password": "guess"})
    assert status == 429 and int(headers["Retry-After"]) > 0 and "try again later" in page
    assert ("session.lockout", "mallory", "127.0.0.1") in audit_actions(site)


def test_requests_and_logins_are_counted_and_served_on_the_metrics_listener(site: Site) -> None:
    """/metrics on its own listener, without a session (Prometheus has none); the operators' port
    never serves it. Routes are patterns, so a unit id never becomes a series."""
    assert site.dash is not None
    port = free_port()
    server = DashboardServer(site.dash, "127.0.0.1", free_port(), metrics_port=port).start()
    try:
        anon = opener()
        assert call(anon, server.url + "login", {"username": "olga", "password": "wrong"})[0] == 401
        op, _ = login(Site(server.url, site.engine, site.client, site.db, site.acked, site.dash))
        assert call(anon, server.url + "rejects/u-123")[0] == 401
        assert call(anon, server.url + "metrics")[0] == 401  # not on the operators' port
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.stop()
    logins = {dict(labels)["outcome"]: v for (name, labels), v in samples.items()
              if name == "linesight_dashboard_logins_total"}
    assert logins == {"refused": 1.0, "ok": 1.0}
    requests = {(dict(labels)["route"], dict(labels)["status"]): v for (name, labels), v in samples.items()
                if name == "linesight_dashboard_requests_total"}
    assert requests[("/login", "401")] == 1 and requests[("/login", "303")] == 1
    assert requests[("/rejects/{unit}", "401")] == 1 and requests[("/", "200")] == 1
    assert not any("u-123" in route for route, _ in requests)
