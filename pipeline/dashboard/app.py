"""The operator dashboard: login, per-line live status, health, last rejects with their frames
and where the model saw the defect (occlusion heat map, ``/rejects/{unit}/heatmap.png``), the
SPC p-chart, alerts with acknowledgement; live updates by Server-Sent Events.

Security: every path but ``/login`` and ``/static/*`` needs a session (``pipeline.auth``: the
same users, roles and sessions as the CLI). The session token travels in an HttpOnly,
SameSite=Strict cookie; a page asking for it gets a redirect to the login page, a POST a 403
(recorded in the audit trail: a state-changing request without a session is forged or
replayed), anything else a 401. The review station's routes are `pipeline.dashboard.review`. An acknowledgement is a POST carrying a CSRF token (an HMAC of the session token with a key
of this process) and, when the browser sends one, an Origin of this host; a forged or missing
token is refused with 403 and the refusal is recorded in the audit trail, as is every
acknowledgement (``alert.acknowledge``).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from http.server import ThreadingHTTPServer

from aiohttp import web

from pipeline.audit.record import AuditEvent
from pipeline.auth.guard import AccessDenied, LockedOut, Principal
from pipeline.core.health import serve_metrics
from pipeline.core.times import now_ns
from pipeline.dashboard.context import (
    ACK,
    COOKIE,
    DASHBOARD_KEY,
    HEALTH_TASK,
    PRINCIPAL,
    REFUSALS_TASK,
    STATIC,
    TOKEN,
    VIEW,
    Dashboard,
    page,
    same_origin,
)
from pipeline.dashboard.localize import LocalizeUnavailable
from pipeline.dashboard.review import add_routes as add_review_routes

log = logging.getLogger(__name__)


def _wants_html(request: web.Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


@web.middleware
async def count_requests(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """Every request by its route's pattern (never the raw path: unit ids would make a series each)
    and its status, refusals included (`linesight_dashboard_requests_total`)."""
    info = request.match_info.route.resource
    route = info.canonical if info is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[DASHBOARD_KEY].metrics.counter("linesight_dashboard_requests").labels(route, str(status)).inc()


@web.middleware
async def auth_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    if request.path == "/login" or request.path.startswith("/static/"):
        return await handler(request)
    dash = request.app[DASHBOARD_KEY]
    token = request.cookies.get(COOKIE, "")
    reason = "not logged in"
    if token:
        try:
            who = await asyncio.to_thread(dash.guard.from_session, token, VIEW, None, request.remote or "")
        except AccessDenied as exc:
            reason = str(exc)
        else:
            request[PRINCIPAL] = who
            request[TOKEN] = token
            return await handler(request)
    if _wants_html(request):
        raise web.HTTPFound("/login")
    if request.method == "POST":  # a state-changing request without a session: forged or replayed
        if not token:  # (an unknown or expired token was already audited by the guard)
            await asyncio.to_thread(dash.guard.refuse_repeated, "", f"POST {request.path}", request.remote or "",
                                    "state-changing request without a session")
        raise web.HTTPForbidden(text=f"refused: {reason}\n")
    raise web.HTTPUnauthorized(text=f"{reason}\n", headers={"WWW-Authenticate": 'Cookie realm="linesight"'})


@web.middleware
async def security_headers(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    resp = await handler(request)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    resp.headers.setdefault("Content-Security-Policy",
                            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
    return resp


async def login_page(request: web.Request, error: str = "", status: int = 401) -> web.Response:
    msg = f"<p class=error id=login-error>{html.escape(error)}</p>" if error else ""
    body = ("<main class=login><h1>LineSight</h1><form method=post action=/login id=login-form>"
            "<label>User <input name=username id=username autocomplete=username required></label>"
            "<label>Password <input name=password id=password type=password autocomplete=current-password required>"
            f"</label><button type=submit id=login-submit>Log in</button>{msg}</form></main>")
    return web.Response(text=page("LineSight login", body), content_type="text/html",
                        status=status if error else 200)


async def login(request: web.Request) -> web.StreamResponse:
    dash = request.app[DASHBOARD_KEY]
    form = await request.post()
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    logins = dash.metrics.counter("linesight_dashboard_logins")
    try:
        token = await asyncio.to_thread(dash.guard.login, username, password, request.remote or "")
    except LockedOut as exc:
        logins.labels("locked_out").inc()
        resp = await login_page(request, "Too many failed log-ins: try again later.", status=429)
        resp.headers["Retry-After"] = str(int(exc.retry_after_s) + 1)
        return resp
    except AccessDenied:
        logins.labels("refused").inc()
        return await login_page(request, "Unknown user or wrong password.")
    logins.labels("ok").inc()
    resp = web.Response(status=303, headers={"Location": "/"})
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=dash.secure_cookie, path="/",
                    max_age=int(dash.guard.session_ttl_s))
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    dash = request.app[DASHBOARD_KEY]
    if not same_origin(request) or not hmac.compare_digest(
            str((await request.post()).get("csrf", "")), dash.csrf_for(request[TOKEN])):
        raise web.HTTPForbidden(text="bad CSRF token\n")
    await asyncio.to_thread(dash.guard.sessions.revoke, request[TOKEN])
    resp = web.Response(status=303, headers={"Location": "/login"})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def index(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD_KEY]
    who: Principal = request[PRINCIPAL]
    csrf = dash.csrf_for(request[TOKEN])
    body = (
        f"<header><h1>LineSight</h1><a href=/review class=navlink id=review-link>Review station</a>"
        "<span id=status class=badge>connecting…</span>"
        f"<span class=user>{html.escape(who.username)} ({html.escape(who.role)})</span>"
        f"<form method=post action=/logout class=inline><input type=hidden name=csrf value='{csrf}'>"
        "<button type=submit>Log out</button></form></header>"
        f"<input type=hidden id=csrf value='{csrf}'>"
        "<main><section><h2>Health</h2><div id=health class=health></div></section>"
        "<section><h2>Alerts</h2><table id=alerts><thead><tr><th>Severity</th><th>Line</th><th>Kind</th>"
        "<th>State</th><th>First seen</th><th>Last seen</th><th>Message</th><th></th></tr></thead>"
        "<tbody></tbody></table><p id=no-alerts class=muted>No open alerts.</p></section>"
        "<section><h2>Lines</h2><div id=lines class=lines><p class=muted>Waiting for the first unit…</p>"
        "</div></section>"
        "<section><h2>Last rejects</h2><div id=rejects class=rejects></div></section>"
        "<noscript><p class=error>The live view needs JavaScript; <a href=/api/state>state as JSON</a>."
        "</p></noscript></main><script src='/static/dashboard.js'></script>"
    )
    return web.Response(text=page("LineSight dashboard", body), content_type="text/html")


async def api_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[DASHBOARD_KEY].state(), dumps=lambda o: json.dumps(o, default=str))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the whole state whenever it changed, and at least every interval
    (silence of a line is itself news: its 'no frame for N s' grows)."""
    dash = request.app[DASHBOARD_KEY]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    try:
        while True:
            data = json.dumps(dash.state(), default=str)
            await resp.write(f"event: state\ndata: {data}\n\n".encode())
            await asyncio.sleep(dash.sse_interval_s)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def reject_image(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(request.app[DASHBOARD_KEY].engine.reject_image, request.match_info["unit"])
    if found is None:
        raise web.HTTPNotFound(text="no frame kept for this unit\n")
    data, ctype = found
    return web.Response(body=data, content_type=ctype if ctype in ("image/png", "image/jpeg") else "image/png",
                        headers={"Cache-Control": "private, max-age=3600"})


async def reject_heatmap(request: web.Request) -> web.Response:
    """Where the model saw the defect on a kept reject frame: occlusion-sensitivity overlay
    (pipeline.dashboard.localize), computed through Triton on first request, then cached."""
    dash = request.app[DASHBOARD_KEY]
    unit = request.match_info["unit"]
    kept = next((r for r in dash.engine.snapshot(now_ns()).get("rejects", []) if r.get("unit_id") == unit), None)
    if kept is None:
        raise web.HTTPNotFound(text="this unit is not among the last rejects\n")
    if dash.localizer is None:
        raise web.HTTPServiceUnavailable(text="heat maps need the inference server (Triton), "
                                              "which this dashboard is not connected to\n")
    png = dash.localizer.cached(unit)
    if png is None:
        found = await asyncio.to_thread(dash.engine.reject_image, unit)
        if found is None:
            raise web.HTTPNotFound(text="no frame kept for this unit\n")
        try:
            png = await asyncio.to_thread(dash.localizer.overlay, unit, str(kept.get("product", "")), found[0])
        except LocalizeUnavailable as exc:
            raise web.HTTPServiceUnavailable(text=f"heat map unavailable: {exc}\n") from None
        except ValueError as exc:
            raise web.HTTPUnprocessableEntity(text=f"heat map unavailable: {exc}\n") from None
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


async def acknowledge(request: web.Request) -> web.StreamResponse:
    dash = request.app[DASHBOARD_KEY]
    who: Principal = request[PRINCIPAL]
    alert_id = request.match_info["alert_id"]
    form = await request.post()
    sent = str(form.get("csrf", "") or request.headers.get("X-CSRF-Token", ""))
    if not same_origin(request) or not hmac.compare_digest(sent, dash.csrf_for(request[TOKEN])):
        await asyncio.to_thread(dash.guard.refuse, who.username, who.role, ACK, alert_id,
                                "acknowledgement with a missing or forged CSRF token, or from another origin")
        raise web.HTTPForbidden(text="refused: bad CSRF token\n")
    try:
        await asyncio.to_thread(dash.guard.authorize, who, ACK, alert_id)
    except AccessDenied as exc:
        raise web.HTTPForbidden(text=f"{exc}\n") from None
    try:
        rec = await asyncio.to_thread(dash.acknowledge, alert_id, who.username)
    except KeyError:
        raise web.HTTPNotFound(text=f"no alert {alert_id}\n") from None
    except ValueError as exc:
        raise web.HTTPConflict(text=f"{exc}\n") from None
    await asyncio.to_thread(dash.guard.trail.record, AuditEvent(
        "alert.acknowledge", subject=alert_id, user=who.username, role=who.role,
        old_value="unacknowledged", new_value="acknowledged", reason=str(form.get("comment", "")),
        detail={"kind": rec.kind, "line": rec.line, "severity": rec.severity, "state": rec.state,
                "message": rec.message},
    ))
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"alert_id": rec.alert_id, "acknowledged_by": rec.acknowledged_by})
    raise web.HTTPSeeOther("/")


async def _health_loop(app: web.Application) -> None:
    dash = app[DASHBOARD_KEY]
    while True:
        try:
            dash._health = await asyncio.to_thread(dash.health)
        except Exception as exc:  # noqa: BLE001 - a failing probe is shown, never fatal
            dash._health = {"probe": {"ok": False, "detail": str(exc)}}
        await asyncio.sleep(dash.health_interval_s)


async def _refusals_loop(app: web.Application) -> None:
    """Write the counts of repeated refusals once their window has closed, even if the flood stops."""
    guard = app[DASHBOARD_KEY].guard
    while True:
        await asyncio.sleep(max(1.0, guard.policy.refusal_window_s / 4))
        try:
            await asyncio.to_thread(guard.flush_refusals)
        except Exception:  # noqa: BLE001 - retried at the next tick; the counts stay pending
            log.exception("writing the counts of repeated refusals failed")


async def _start_background(app: web.Application) -> None:
    app[HEALTH_TASK] = asyncio.create_task(_health_loop(app))
    app[REFUSALS_TASK] = asyncio.create_task(_refusals_loop(app))


async def _stop_background(app: web.Application) -> None:
    app[HEALTH_TASK].cancel()
    app[REFUSALS_TASK].cancel()


def make_app(dash: Dashboard) -> web.Application:
    app = web.Application(middlewares=[count_requests, security_headers, auth_middleware],
                          client_max_size=64 * 1024)
    app[DASHBOARD_KEY] = dash
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", index)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/events", events)
    app.router.add_get("/rejects/{unit}", reject_image)
    app.router.add_get("/rejects/{unit}/heatmap.png", reject_heatmap)
    app.router.add_post("/alerts/{alert_id}/ack", acknowledge)
    add_review_routes(app)  # the review station (docs/review.md)
    app.router.add_static("/static/", STATIC, show_index=False)
    app.on_startup.append(_start_background)
    app.on_cleanup.append(_stop_background)
    return app


class DashboardServer:
    """Runs the app on its own event loop in a daemon thread (the stack process is threaded)."""

    def __init__(self, dash: Dashboard, host: str, port: int, metrics_port: int = 0, metrics_host: str = "127.0.0.1"
                 ) -> None:
        import threading

        self.dash, self.host, self.port = dash, host, port
        # /metrics without a session, on a listener of its own (never the operators' port); 0: none.
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self._metrics: ThreadingHTTPServer | None = None
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(make_app(self.dash), handle_signals=False, shutdown_timeout=1.0)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self, timeout_s: float = 10.0) -> DashboardServer:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("dashboard did not start")
        if self._error is not None:
            raise RuntimeError(f"dashboard cannot listen on {self.host}:{self.port}: {self._error}")
        if self.metrics_port:
            self._metrics = serve_metrics(self.dash.metrics, self.metrics_port, self.metrics_host, "dashboard")
        return self

    def stop(self) -> None:
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10.0)
        if self.dash.frames is not None:  # its broker connection, before the broker goes away
            self.dash.frames.close()
            self.dash.frames = None


def wait_listening(url: str, timeout_s: float = 10.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "login", timeout=1.0).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"dashboard at {url} does not answer")
