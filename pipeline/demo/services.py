"""Runs the LineSight services on a resolved stack: workers, actuator, sink, simulated line.

Workers and the actuator run as child processes (`linesight worker`, `linesight actuator`), the
same commands production runs in containers; each is awaited through its readiness endpoint.
With embedded chDB the sink runs in this process, because only one process may open a chDB
data directory and the report and dashboard query it here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from pipeline.analytics.sink import run_sink
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.health import HealthState
from pipeline.embedded.process import ManagedProcess, ServiceStartError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0


def _plain(value: Any) -> Any:
    """JSON-ready form of a settings value, secrets revealed (the child needs them)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _plain(item) for name, item in value}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _env_text(value: Any) -> str:
    plain = _plain(value)
    return json.dumps(plain) if isinstance(plain, (dict, list)) else str(plain)


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces `settings` in a child process."""
    env: dict[str, str] = {}
    for section, value in settings:
        if value is None:
            continue
        if not isinstance(value, BaseModel):
            env[f"LINESIGHT_{section.upper()}"] = _env_text(value)
            continue
        for name, item in value:
            if item is not None:
                env[f"LINESIGHT_{section.upper()}__{name.upper()}"] = _env_text(item)
    return env


def http_ready(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return probe


def linesight_command() -> list[str]:
    """This interpreter running the CLI module: works from a venv without PATH set up."""
    return [sys.executable, "-m", "pipeline.cli"]


def child_env(settings: Settings) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LINESIGHT_")}
    return base | settings_to_env(settings) | {"PYTHONUNBUFFERED": "1"}


@dataclass
class Services:
    """Handles of the running services of one stack."""

    settings: Settings
    worker_count: int = 1
    processes: list[ManagedProcess] = field(default_factory=list)
    sink_health: HealthState | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    alerts_health: HealthState | None = None
    dashboard_url: str | None = None

    def worker_urls(self) -> list[str]:
        port = self.settings.stream.web_port
        return [f"http://127.0.0.1:{port + i}" for i in range(self.worker_count)]


def start_worker(settings: Settings, index: int) -> ManagedProcess:
    port = settings.stream.web_port + index
    worker_settings = settings.model_copy(
        update={"stream": settings.stream.model_copy(update={"web_port": port})}
    )
    proc = ManagedProcess(
        f"worker-{index}",
        [*linesight_command(), "worker"],
        child_env(worker_settings),
        settings.log_dir / f"worker-{index}.log",
    )
    proc.start()
    return proc


def start_actuator(settings: Settings) -> ManagedProcess:
    proc = ManagedProcess(
        "actuator",
        [*linesight_command(), "actuator"],
        child_env(settings),
        settings.log_dir / "actuator.log",
    )
    proc.start()
    return proc


def start_sink_thread(settings: Settings, client: ClickHouseClient, services: Services) -> None:
    health = HealthState("sink")
    services.sink_health = health

    def run() -> None:
        try:
            run_sink(settings, client, services.stop_event, health)
        except Exception:  # noqa: BLE001 - reported, and the stack stops on a dead sink
            log.exception("ClickHouse sink stopped with an error")
            health.tick(error="sink stopped with an error; see log")
            services.stop_event.set()

    thread = threading.Thread(target=run, name="clickhouse-sink", daemon=True)
    thread.start()
    services.threads.append(thread)


def wait_sink_ready(services: Services, timeout_s: float, health: HealthState | None = None) -> None:
    """Await an in-process consumer service (the sink, or `health`'s) until it has partitions."""
    health = health or services.sink_health
    assert health is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = health.snapshot()
        if snap["ready"]:
            return
        if services.stop_event.is_set():
            raise ServiceStartError(health.service, snap.get("error", "stopped"))
        services.stop_event.wait(0.1)
    raise ServiceStartError(health.service, f"no partitions assigned within {timeout_s:.0f} s")


@contextmanager
def running_services(
    settings: Settings, client: ClickHouseClient, workers: int = 1
) -> Iterator[Services]:
    """Start workers, actuator and sink; yield once all are ready; stop them all on exit."""
    services = Services(settings, worker_count=workers)
    stops: list[Callable[[], None]] = []
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for i in range(workers):
            services.processes.append(start_worker(settings, i))
        actuator = start_actuator(settings)
        services.processes.append(actuator)
        start_sink_thread(settings, client, services)
        from pipeline.dashboard.stack import start_alerts_and_dashboard

        assert services.sink_health is not None
        services.alerts_health, dashboard = start_alerts_and_dashboard(
            settings, client, services.stop_event, services.worker_urls(), [services.sink_health], services.threads
        )
        stops.append(dashboard.stop)
        services.dashboard_url = dashboard.url
        for i, proc in enumerate(services.processes[:workers]):
            proc.wait_ready(http_ready(f"{services.worker_urls()[i]}/readyz"), READY_TIMEOUT_S)
        actuator.wait_ready(
            http_ready(f"http://127.0.0.1:{settings.services.actuator_health_port}/readyz"), READY_TIMEOUT_S
        )
        wait_sink_ready(services, READY_TIMEOUT_S)
        wait_sink_ready(services, READY_TIMEOUT_S, services.alerts_health)
        yield services
    finally:
        for stop in stops:
            stop()
        for proc in reversed(services.processes):
            proc.stop(30.0)
        services.stop_event.set()
        for thread in services.threads:
            thread.join(timeout=30.0)

