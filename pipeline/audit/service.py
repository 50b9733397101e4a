"""The audit service: the one appender (`pipeline.audit.appender`) and the sealer in one process.

One process because they are one writer: the only holder of the trail key and of the anchor
volume, appending every chain (events, seal records) under the same per-chain locks. It runs as
``linesight audit serve`` (compose service ``auditsealer``) and on threads of the embedded stack.
Stopping drains first: the events the other services submitted before they stopped are appended,
then the final seal covers them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pipeline.audit.appender import run_appender
from pipeline.audit.publish import BestEffortPublisher
from pipeline.audit.seals import SealStatement, run_sealing_service
from pipeline.audit.trail import AuditTrail
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.health import HealthState
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "audit"


class AuditService:
    """Appender and sealer threads; `start` again after a crash, `stop` drains, seals, returns the
    final seal's statements. ``each_round(n)``: after every sealing round (`run_sealing_service`)."""

    def __init__(self, settings: Settings, client: ClickHouseClient,
                 each_round: Callable[[int | None], None] | None = None) -> None:
        self.settings = settings
        self.trail = AuditTrail.from_settings(settings, client, BestEffortPublisher(settings), direct=True)
        self.health = HealthState("audit-appender")
        self.each_round = each_round
        self.final: list[SealStatement] = []
        self._stop = threading.Event()
        self._drained = threading.Event()
        self._seal_stop = threading.Event()
        self._threads: list[threading.Thread | None] = []

    def start(self) -> None:
        """Start the appender and the sealer, or whichever of them died (a supervisor's restart)."""
        old = self._threads or [None, None]
        appender, sealer = old
        if appender is None or not appender.is_alive():
            self._stop, self._drained = threading.Event(), threading.Event()
            appender = threading.Thread(target=self._append, args=(self._stop, self._drained),
                                        name=f"{SERVICE}-appender", daemon=True)
            appender.start()
        if sealer is None or not sealer.is_alive():
            self._seal_stop = threading.Event()
            sealer = threading.Thread(target=self._seal, args=(self._seal_stop,), name=f"{SERVICE}-sealer",
                                      daemon=True)
            sealer.start()
        self._threads = [appender, sealer]

    def _append(self, stop: threading.Event, drained: threading.Event) -> None:
        run_appender(self.settings, self.trail, stop, self.health, drained)

    def _seal(self, stop: threading.Event) -> None:
        self.final = run_sealing_service(self.trail, stop, each_round=self._round)

    def _round(self, anchored: int | None) -> None:
        if anchored is not None:
            self.health.metrics.gauge("linesight_audit_last_seal_timestamp_seconds").set(time.time())
        if self.each_round is not None:
            self.each_round(anchored)

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t is not None and t.is_alive() for t in self._threads)

    def status(self) -> dict[str, object]:
        """For the compose healthcheck's status file: the appender's liveness and readiness."""
        snap = self.health.snapshot()
        appender = self._threads[0] if self._threads else None
        return {"appender_alive": appender is not None and appender.is_alive() and bool(snap["alive"]),
                "appender_ready": bool(snap["ready"])}

    def stop(self, timeout_s: float = 60.0) -> list[SealStatement]:
        """Append what is on the events topic (until it stays empty, within ``timeout_s``), then stop
        the sealer, which seals every chain with new records and anchors a heartbeat of every head."""
        if not self._threads:
            return self.final
        appender, sealer = self._threads
        assert appender is not None and sealer is not None
        self._drained.set()
        appender.join(timeout_s)
        if appender.is_alive():
            log.error("the audit appender did not drain the events topic within %.0f s: stopping it; the "
                      "events left stay on the topic and are appended at the next start", timeout_s)
            self._stop.set()
            appender.join(10.0)
        self._seal_stop.set()
        sealer.join(timeout_s)
        return self.final
