"""What every page of the dashboard shares: the `Dashboard` (what the web app needs from the
stack), the request keys the log-in middleware sets, and the page and origin helpers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from pipeline.alerts.engine import AlertEngine
from pipeline.alerts.record import AlertRecord
from pipeline.auth.guard import Guard, Principal
from pipeline.core.metrics import Metrics
from pipeline.core.times import now_ns
from pipeline.dashboard.localize import Localizer
from pipeline.dashboard.remote import RemoteAlerts, TritonVersions
from pipeline.review.desk import ReviewDesk
from pipeline.review.frames import BrokerFrames

STATIC = Path(__file__).parent / "static"
COOKIE = "ls_session"
VIEW = "dashboard.view"
ACK = "alarm.acknowledge"


@dataclass
class Dashboard:
    """What the web app needs from the stack."""

    engine: AlertEngine | RemoteAlerts        # in-process (`linesight up`) or the alert service's API
    guard: Guard
    acknowledge: Callable[[str, str], AlertRecord]          # (alert id, user) -> published record
    health: Callable[[], dict[str, Any]] = lambda: {}          # blocking probe, run off the loop
    secure_cookie: bool = False
    versions: TritonVersions | None = None                     # "model live": Triton's ready version
    localizer: Localizer | None = None                         # reject heat maps through Triton
    review: ReviewDesk | None = None                           # the review station (docs/review.md)
    frames: BrokerFrames | None = None                         # judged frames read back from the broker
    sse_interval_s: float = 1.0
    health_interval_s: float = 2.0
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    metrics: Metrics = field(default_factory=Metrics)  # served by `serve_metrics` (docs/observability.md)
    _health: dict[str, Any] = field(default_factory=dict)

    def csrf_for(self, token: str) -> str:
        return hmac.new(self.csrf_key, token.encode(), hashlib.sha256).hexdigest()

    def state(self) -> dict[str, Any]:
        snap = self.engine.snapshot(now_ns())
        if self.versions is not None:
            snap = snap | {"lines": [line | {"models": self.versions.overlay(line.get("models", {}))}
                                     for line in snap.get("lines", [])]}
        return snap | {"health": self._health, "server_time_ns": now_ns()}


DASHBOARD_KEY: web.AppKey[Dashboard] = web.AppKey("dashboard", Dashboard)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
TOKEN: web.RequestKey[str] = web.RequestKey("token", str)
HEALTH_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("health_task", asyncio.Task)
REFUSALS_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("refusals_task", asyncio.Task)


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            "<link rel=stylesheet href='/static/dashboard.css'></head><body>" + body + "</body></html>")


def same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host



def csrf_ok(request: web.Request, sent: str) -> bool:
    """A state-changing request carries this session's CSRF token and comes from this host."""
    dash = request.app[DASHBOARD_KEY]
    return same_origin(request) and hmac.compare_digest(sent, dash.csrf_for(request[TOKEN]))
