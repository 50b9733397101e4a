"""Runs the LineSight services on a resolved stack: workers, actuator, sink, simulated line.

Workers and the actuator run as child processes (`linesight worker`, `linesight actuator`), the
same commands production runs in containers; each is awaited through its readiness endpoint.
With embedded chDB the sink runs in this process, because only one process may open a chDB
data directory and the report and dashboard query it here.

Everything started here is supervised (`pipeline.embedded.process.Supervisor`): a worker, the
actuator, the sink or the alert service thread that dies is restarted, and the outage is an alarm on ``linesight.alarms``
(`StackAlarms`), raised while it is down and cleared when it is back, or at shutdown.
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

from pipeline.actuation.service import AlarmOutbox
from pipeline.alerts.service import AlertThread
from pipeline.analytics.sink import run_sink
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.health import HealthState
from pipeline.core.times import now_ns
from pipeline.embedded.process import ManagedProcess, ServiceChange, ServiceStartError, Supervisor, ensure_port_free
from pipeline.kafka.clients import RenewingProducer
from pipeline.settings import Settings
from pipeline.wire.messages import AlarmRecord

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


def http_ready(url: str, pid: int | None = None, field_name: str = "worker") -> Callable[[], bool]:
    """A readiness probe; with ``pid``, only the process we started counts (its id in the body's
    ``field_name`` ends with ``-<pid>``): a stale process holding the port is not ready."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status != 200:
                    return False
                if pid is None:
                    return True
                body = json.loads(response.read() or b"{}")
                return str(body.get(field_name, "")).endswith(f"-{pid}")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return probe


DOWN_CODE = "service_down"


class StackAlarms:
    """Outages of supervised services as alarms on ``linesight.alarms``, independent of the
    actuator (which may be the one down): raised when a service dies, cleared when it is back,
    kept and re-sent while the broker itself is down, and closed with a reason at shutdown."""

    def __init__(self, settings: Settings, source: str = "embedded-stack") -> None:
        # Not idempotent (a restarted memory-only broker forgets producer ids), and renewed after a
        # stall like every long-lived producer.
        conf: dict[str, Any] = {"enable.idempotence": False, "message.timeout.ms": 5000}
        producer = RenewingProducer(settings.kafka, "linesight-stack-alarms", **conf)
        self._outbox = AlarmOutbox(producer, settings.kafka.topic_alarms)
        self._source = source
        self._open: dict[str, AlarmRecord] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pump = threading.Thread(target=self._run, name="stack-alarms", daemon=True)
        self._pump.start()

    def on_change(self, change: ServiceChange) -> None:
        with self._lock:
            if not change.up:
                if change.service in self._open:
                    return
                record = AlarmRecord(f"{self._source}:{change.service}:{change.at_ns}", DOWN_CODE, True, change.at_ns,
                                     f"{change.service} is down ({change.reason}); restarting", self._source)
                self._open[change.service] = record
            else:
                raised = self._open.pop(change.service, None)
                if raised is None:
                    return
                record = AlarmRecord(raised.alarm_id, DOWN_CODE, False, raised.raised_ns, raised.reason, self._source,
                                     cleared_ns=change.at_ns, clear_reason=change.reason)
        self._outbox.publish(record)

    def close(self, timeout_s: float = 10.0) -> None:
        """Clear what is still open ("closed at shutdown") and send everything unsent."""
        with self._lock:
            still = list(self._open)
        for service in still:
            self.on_change(ServiceChange(service, True, "closed at shutdown: the stack stopped", now_ns()))
        self._stop.set()
        self._pump.join(5.0)
        self._outbox.pump(timeout_s)
        if self._outbox.unsent:
            log.error("%d stack alarm records could not be published", self._outbox.unsent)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._outbox.pump()


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
    sink_stop: threading.Event = field(default_factory=threading.Event)  # this sink thread only
    supervisor: Supervisor | None = None

    def worker_urls(self) -> list[str]:
        port = self.settings.stream.web_port
        return [f"http://127.0.0.1:{port + i}" for i in range(self.worker_count)]


def start_worker(settings: Settings, index: int) -> ManagedProcess:
    port = settings.stream.web_port + index
    worker_settings = settings.model_copy(
        update={"stream": settings.stream.model_copy(update={"web_port": port})}
    )
    ensure_port_free(port, f"worker-{index}", setting="LINESIGHT_STREAM__WEB_PORT")
    proc = ManagedProcess(
        f"worker-{index}",
        [*linesight_command(), "worker"],
        child_env(worker_settings),
        settings.log_dir / f"worker-{index}.log",
    )
    proc.start()
    return proc


def start_actuator(settings: Settings) -> ManagedProcess:
    ensure_port_free(settings.services.actuator_health_port, "actuator",
                     setting="LINESIGHT_SERVICES__ACTUATOR_HEALTH_PORT")
    proc = ManagedProcess(
        "actuator",
        [*linesight_command(), "actuator"],
        child_env(settings),
        settings.log_dir / "actuator.log",
    )
    proc.start()
    return proc


def start_sink_thread(settings: Settings, client: ClickHouseClient, services: Services) -> threading.Thread:
    """The sink on a thread of this process; it ends on `Services.sink_stop` or an error, and the
    supervisor starts a new one (consuming from the committed offsets: nothing is lost)."""
    health = HealthState("sink")
    services.sink_health = health
    services.sink_stop = stop = threading.Event()

    def run() -> None:
        try:
            run_sink(settings, client, stop, health)
        except Exception:  # noqa: BLE001 - reported; the supervisor restarts the sink
            log.exception("ClickHouse sink stopped with an error")
            health.tick(error="sink stopped with an error; see log")

    thread = threading.Thread(target=run, name="clickhouse-sink", daemon=True)
    thread.start()
    services.threads.append(thread)
    return thread


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


def supervise_services(services: Services, client: ClickHouseClient, supervisor: Supervisor) -> None:
    """Restart a dead worker, actuator or sink thread, each awaited ready again."""
    settings = services.settings

    def restart_process(index: int) -> Callable[[], None]:
        def restart() -> None:
            services.processes[index].stop(5.0, kill_expected=True)  # reap what the dead one left
            if index < services.worker_count:
                proc = start_worker(settings, index)
                url = f"{services.worker_urls()[index]}/readyz"
                services.processes[index] = proc
                proc.wait_ready(http_ready(url, proc.pid, "worker"), READY_TIMEOUT_S)
            else:
                proc = start_actuator(settings)
                services.processes[index] = proc
                port = settings.services.actuator_health_port
                proc.wait_ready(http_ready(f"http://127.0.0.1:{port}/readyz", proc.pid, "actuator"), READY_TIMEOUT_S)

        return restart

    for i, proc in enumerate(services.processes):
        supervisor.watch(proc.name, lambda i=i: services.processes[i].alive, restart_process(i))  # type: ignore[misc]
    sink = [t for t in services.threads if t.name == "clickhouse-sink"]

    def restart_sink() -> None:
        sink[0] = start_sink_thread(settings, client, services)
        wait_sink_ready(services, READY_TIMEOUT_S)

    supervisor.watch("sink", lambda: sink[0].is_alive(), restart_sink)
    supervise_alerts(services, supervisor)


def supervise_alerts(services: Services, supervisor: Supervisor) -> None:
    """Restart the alert service's thread on its engine (the dashboard's state stays) when it
    dies, e.g. on a commit error a broker restart left behind; awaited ready again."""
    alerts = [t for t in services.threads if isinstance(t, AlertThread)]
    if not alerts:
        return

    def restart_alerts() -> None:
        alerts[0] = alerts[0].restarted()
        services.threads.append(alerts[0])
        wait_sink_ready(services, READY_TIMEOUT_S, alerts[0].health)

    supervisor.watch("alerts", lambda: alerts[0].is_alive(), restart_alerts)


@contextmanager
def running_services(
    settings: Settings, client: ClickHouseClient, workers: int = 1
) -> Iterator[Services]:
    """Start workers, actuator and sink; yield once all are ready, supervised; stop them all on exit."""
    services = Services(settings, worker_count=workers)
    stops: list[Callable[[], None]] = []
    alarms: StackAlarms | None = None
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
            proc.wait_ready(http_ready(f"{services.worker_urls()[i]}/readyz", proc.pid, "worker"), READY_TIMEOUT_S)
        actuator.wait_ready(
            http_ready(f"http://127.0.0.1:{settings.services.actuator_health_port}/readyz", actuator.pid, "actuator"),
            READY_TIMEOUT_S,
        )
        wait_sink_ready(services, READY_TIMEOUT_S)
        wait_sink_ready(services, READY_TIMEOUT_S, services.alerts_health)
        alarms = StackAlarms(settings)
        services.supervisor = Supervisor(alarms.on_change)
        supervise_services(services, client, services.supervisor)
        yield services
    finally:
        if services.supervisor is not None:
            services.supervisor.stop()  # first: stopping the services is not an outage
        if alarms is not None:
            alarms.close()
        for stop in stops:
            stop()
        for proc in reversed(services.processes):
            proc.stop(30.0)
        services.stop_event.set()
        services.sink_stop.set()
        for thread in services.threads:
            thread.join(timeout=30.0)

