"""What the production dashboard (`linesight dashboard`) reads from other services: the alert
service's state, frames and acknowledgements over its API (`pipeline.alerts.service.serve_alerts_api`),
and the classifier versions Triton serves ("model live" per product).

Both poll in a daemon thread and keep the last answer, so the dashboard's event loop never waits
on the network; an unreachable alert service keeps the last state and says so in `error`.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from pipeline.alerts.engine import AlertConfig
from pipeline.alerts.record import AlertRecord

log = logging.getLogger(__name__)

EMPTY_STATE: dict[str, Any] = {"version": 0, "lines": [], "workers": {}, "alerts": [], "rejects": []}


class RemoteAlerts:
    """The alert engine's views (`snapshot`, `reject_image`, `config`) and `acknowledge`, served by
    the alert service at `url` (e.g. http://alerts:16072)."""

    def __init__(self, url: str, token: str, config: AlertConfig, poll_s: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.config = config
        self.poll_s = poll_s
        self.error = "not fetched yet"
        self._state: dict[str, Any] = dict(EMPTY_STATE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="dashboard-alerts-poll", daemon=True)

    def _request(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes, str]:
        req = urllib.request.Request(
            self.url + path, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=3.0) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")

    def refresh(self) -> None:
        try:
            code, body, _ = self._request("/state")
            if code != 200:
                raise RuntimeError(f"HTTP {code}: {body[:200].decode(errors='replace')}")
            self._state, self.error = json.loads(body), ""
        except Exception as exc:  # noqa: BLE001 - shown on the page; the last state stays
            self.error = f"alert service {self.url}: {exc}"

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.poll_s)

    def start(self) -> RemoteAlerts:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self, now_ns: int) -> dict[str, Any]:  # noqa: ARG002 - the engine's signature
        return self._state

    def reject_image(self, unit_id: str) -> tuple[bytes, str] | None:
        try:
            code, body, ctype = self._request(f"/rejects/{quote(unit_id, safe='')}")
        except OSError:
            return None
        return (body, ctype) if code == 200 else None

    def acknowledge(self, alert_id: str, user: str) -> AlertRecord:
        """KeyError for an unknown alert, ValueError when already acknowledged (as the engine)."""
        code, body, _ = self._request(f"/alerts/{quote(alert_id, safe='')}/ack", {"user": user})
        data = json.loads(body or b"{}")
        if code == 404:
            raise KeyError(alert_id)
        if code == 409:
            raise ValueError(data.get("error", "already acknowledged"))
        if code != 200:
            raise RuntimeError(f"alert service refused the acknowledgement: HTTP {code} {data.get('error', '')}")
        self.refresh()
        return AlertRecord(**data)


class TritonVersions:
    """The newest READY version of each classifier in Triton, asked every `every_s` in a thread.
    `ready_versions(model) -> [int]` is `pipeline.model.deploy.TritonTarget.ready_versions`."""

    def __init__(self, ready_versions: Callable[[str], list[int]], every_s: float = 10.0) -> None:
        self.ready_versions = ready_versions
        self.every_s = every_s
        self._live: dict[str, int] = {}
        self._wanted: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def refresh(self) -> None:
        with self._lock:
            wanted = sorted(self._wanted)
        live: dict[str, int] = {}
        for model in wanted:
            try:
                versions = self.ready_versions(model)
            except Exception as exc:  # noqa: BLE001 - Triton unreachable: the results' versions are shown
                log.debug("Triton versions of %s: %s", model, exc)
                continue
            if versions:
                live[model] = max(versions)
        with self._lock:
            self._live = live

    def overlay(self, models: dict[str, str]) -> dict[str, str]:
        """product -> "classifier:version" of the last result, replaced by Triton's ready version
        where Triton answered; notes the classifiers to ask about next time."""
        out = {}
        with self._lock:
            for product, text in models.items():
                name = text.split(":", 1)[0]
                self._wanted.add(name)
                out[product] = f"{name}:{self._live[name]}" if name in self._live else text
        return out

    def start(self) -> TritonVersions:
        def run() -> None:
            while not self._stop.is_set():
                self.refresh()
                self._stop.wait(self.every_s)

        threading.Thread(target=run, name="dashboard-triton-versions", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

