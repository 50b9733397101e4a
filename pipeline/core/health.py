"""A small HTTP health endpoint for the confluent-kafka services (sink, actuator).

`/healthz` answers 200 while the service loop is alive (it ticked recently); `/readyz` answers 200
once the consumer has its partitions. Compose healthchecks and the embedded stack probe these.
`/metrics` serves the service's Prometheus metrics (pipeline.core.metrics) on the same port.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.core.metrics import Metrics


class HealthState:
    """Thread-safe liveness/readiness flags plus counters shown on the endpoint, and the service's
    Prometheus metrics (on ``registry``, a new one unless given: services sharing a process each
    have their own)."""

    def __init__(self, service: str, stale_after_s: float = 30.0, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.metrics = Metrics(registry)
        self._stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._last_tick = time.monotonic()
        self._ready = False
        self._counters: dict[str, Any] = {}

    def tick(self, **counters: Any) -> None:
        with self._lock:
            self._last_tick = time.monotonic()
            self._counters.update(counters)

    def set_ready(self, ready: bool) -> None:
        with self._lock:
            self._ready = ready

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            alive = time.monotonic() - self._last_tick < self._stale_after_s
            return {"service": self.service, "alive": alive, "ready": self._ready and alive} | self._counters


def serve_health(state: HealthState, port: int, host: str) -> ThreadingHTTPServer:
    """Serve the state on a daemon thread; returns the server (call `.shutdown()` to stop).

    ``host`` has no default: the endpoints are unauthenticated, so each caller binds where its
    probes come from (``services.health_host``, loopback unless configured)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/metrics":
                send_metrics(self, state.metrics)
                return
            snap = state.snapshot()
            if self.path == "/healthz":
                ok = snap["alive"]
            elif self.path == "/readyz":
                ok = snap["ready"]
            else:
                self.send_error(404)
                return
            body = json.dumps(snap).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=f"{state.service}-health", daemon=True).start()
    return server


def send_metrics(handler: BaseHTTPRequestHandler, metrics: Metrics) -> None:
    """Answer a GET with the metrics in Prometheus text format."""
    body, content_type = metrics.exposition()
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve_metrics(metrics: Metrics, port: int, host: str, name: str) -> ThreadingHTTPServer:
    """Serve only ``/metrics`` on a daemon thread: for a service whose health endpoint must stay
    on loopback (the Faust worker's web server also has Faust's own unauthenticated pages)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/metrics":
                send_metrics(self, metrics)
            else:
                self.send_error(404)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=f"{name}-metrics", daemon=True).start()
    return server


def worker_id() -> str:
    """This process's id in heartbeats, service names and audit records: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"
