"""After a crash the alert side comes back: `pipeline_health` clears once every worker that went
silent has a replacement, and the stack restarts a dead alert service thread on its engine."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from support import eventually

from pipeline.alerts import service as alert_service
from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.service import AlertService, AlertThread
from pipeline.core.health import HealthState
from pipeline.demo.services import Services, supervise_alerts
from pipeline.embedded.process import ServiceChange, Supervisor
from pipeline.settings import Settings
from pipeline.wire.messages import Heartbeat

S = 1_000_000_000


def beat(eng: AlertEngine, source: str, t: int) -> list[Any]:
    return eng.on_heartbeat(Heartbeat(source, "worker", t, True), t)


def raised(eng: AlertEngine) -> bool:
    return any(a.kind == "pipeline_health" for a in eng.book.active.values())


def test_pipeline_health_clears_when_a_restarted_worker_replaces_the_dead_one() -> None:
    eng = AlertEngine(AlertConfig(heartbeat_stale_s=3))
    beat(eng, "host-100", 0)
    beat(eng, "host-101", 0)
    (alert,) = beat(eng, "host-101", 4 * S)  # host-100 was killed at 0
    assert alert.kind == "pipeline_health" and alert.state == "active" and "host-100" in alert.message
    (cleared,) = beat(eng, "host-102", 6 * S)  # the supervisor's restart: a new pid, a new id
    assert cleared.kind == "pipeline_health" and cleared.state == "cleared"
    beat(eng, "host-101", 6 * S)
    assert eng.tick(7 * S) == [] and not raised(eng) and set(eng.workers) == {"host-101", "host-102"}


def test_a_worker_that_stays_dead_keeps_pipeline_health_raised() -> None:
    """One replacement per silent worker: two died, one came back, the alert stands."""
    eng = AlertEngine(AlertConfig(heartbeat_stale_s=3))
    beat(eng, "host-100", 0)
    beat(eng, "host-101", 0)
    beat(eng, "host-102", 5 * S)
    eng.tick(5 * S)
    eng.tick(6 * S)
    assert raised(eng) and len(eng.workers) == 2  # one of the dead two is still missing
    beat(eng, "host-103", 7 * S)  # the second replacement
    assert not raised(eng) and set(eng.workers) == {"host-102", "host-103"}


def test_a_worker_already_running_is_not_a_replacement() -> None:
    eng = AlertEngine(AlertConfig(heartbeat_stale_s=3))
    beat(eng, "host-100", 0)
    beat(eng, "host-101", 0)
    beat(eng, "host-101", 5 * S)
    eng.tick(5 * S)
    assert raised(eng) and "host-100" in eng.workers


class _Publisher:
    def publish(self, records: Any, timeout_s: float = 30.0) -> None:
        return None


def test_the_stack_restarts_a_dead_alert_thread_on_the_same_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[AlertService] = []

    def run(service: AlertService, stop: threading.Event, health: HealthState) -> None:
        runs.append(service)
        if len(runs) == 1:
            raise RuntimeError("commit refused: UNKNOWN_MEMBER_ID")  # the first run dies
        health.set_ready(True)
        stop.wait(30.0)

    monkeypatch.setattr(alert_service, "run_alert_service", run)
    settings = Settings()
    service = AlertService(settings, AlertEngine(), _Publisher())  # type: ignore[arg-type]
    services = Services(settings)
    health = HealthState("alerts")
    services.threads.append(AlertThread(service, services.stop_event, health))
    changes: list[ServiceChange] = []
    sup = Supervisor(changes.append, initial_backoff_s=0.05, poll_s=0.02)
    supervise_alerts(services, sup)
    services.threads[0].start()
    try:
        eventually(lambda: sup.restarts.get("alerts", 0) >= 1, 10.0, "the alert thread restarted", poll_s=0.02)
        assert sup.restarts.get("alerts") == 1
        assert [(c.service, c.up) for c in changes] == [("alerts", False), ("alerts", True)]
        assert runs == [service, service] and health.snapshot()["ready"] and not health.snapshot()["error"]
        assert not services.stop_event.is_set()  # a dead alert service does not stop the stack
    finally:
        sup.stop()
        services.stop_event.set()
        for t in services.threads:
            t.join(5.0)
