"""`linesight demo` and `linesight up`: the whole pipeline on one machine.

The demo starts the stack (embedded services unless external addresses are configured), runs a
simulated line for a bounded time, waits until every published unit is decided, stored and its
reject fired (probing ClickHouse with a deadline), and returns the run report.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.actuation.plc.embedded import SERVICE as SERVICE_PLC
from pipeline.actuation.plc.embedded import EmbeddedPlc
from pipeline.analytics.run_report import RunReport, build_report
from pipeline.audit.record import DECISION_ACTION, AuditEvent, os_user
from pipeline.audit.service import SERVICE as AUDIT_SERVICE
from pipeline.audit.service import AuditService
from pipeline.audit.trail import AuditTrail
from pipeline.clickhouse import ClickHouseClient, connect
from pipeline.demo.services import Services, running_services
from pipeline.embedded.broker import SERVICE as SERVICE_BROKER
from pipeline.embedded.process import Supervisor
from pipeline.embedded.stack import EmbeddedStack
from pipeline.embedded.triton import SERVICE as SERVICE_TRITON
from pipeline.gateway.publisher import FramePublisher, run_simulated_line
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 180.0
# Once every unit has been at the gate, how long fire records may still be on their way.
FIRE_RECORD_GRACE_S = 10.0


class DrainTimeout(RuntimeError):
    """Units were published but not all decided, stored and fired in time."""


def supervise_stack(stack: EmbeddedStack, plc: EmbeddedPlc, resolved: Settings, supervisor: Supervisor) -> None:
    """Restart the embedded broker, Triton and PLC simulator when they die.

    Tansu keeps its log in memory: a restarted broker has lost every topic, offset and message
    not yet consumed, so the topics are created again; units whose frames were lost are covered
    by the PLC's reject-all (the watchdog) and appear as unaccounted, never as passed.
    """
    broker, triton = stack.broker, stack.triton
    if broker is not None and broker.process is not None:
        def restart_broker() -> None:
            broker.stop()
            broker.start()
            ensure_topics(resolved)

        supervisor.watch(SERVICE_BROKER, lambda: broker.process is not None and broker.process.alive, restart_broker)
    if triton is not None and triton.process is not None:
        def restart_triton() -> None:
            triton.stop()
            triton.start()

        supervisor.watch(SERVICE_TRITON, lambda: triton.process is not None and triton.process.alive, restart_triton)
    if plc.process is not None:
        def restart_plc() -> None:
            plc.stop()
            plc.start()

        supervisor.watch(SERVICE_PLC, lambda: plc.process is not None and plc.process.alive, restart_plc)


def submitting(settings: Settings, public_key: str | None = None) -> Settings:
    """The settings of every service but the audit service: audit events go to the audit service,
    and `verify` trusts its key (``public_key``, hex, unless one is pinned already)."""
    update: dict[str, object] = {"append_via": "topic"}
    if public_key and not settings.audit.seal_public_key:
        update["seal_public_key"] = public_key
    return settings.model_copy(update={"audit": settings.audit.model_copy(update=update)})


@contextmanager
def pipeline_stack(settings: Settings, workers: int = 1) -> Iterator[tuple[Settings, ClickHouseClient, Services]]:
    """Stack (broker, Triton, the gate's PLC), ClickHouse schema, the audit service and the other
    services, all ready and supervised; everything stopped on exit, the audit service last (after
    the services, so it appends what they submitted and its final seal covers it; the broker still
    takes it). The yielded settings submit audit events (``audit.append_via=topic``), as every
    service but the audit service does in production."""
    stack = EmbeddedStack(settings)
    with stack as with_services:
        plc = EmbeddedPlc(with_services)
        with plc as resolved:
            client = connect(resolved)
            audit = AuditService(resolved, client)
            key = audit.trail.key
            services_settings = submitting(resolved, key.public_hex if key is not None else None)
            try:
                client.apply_schema(resolved.clickhouse.database)
                audit.start()  # before the services: the first thing they do may be an audited action
                with running_services(services_settings, client, workers) as services:
                    assert services.supervisor is not None
                    supervise_stack(stack, plc, resolved, services.supervisor)
                    services.supervisor.watch(AUDIT_SERVICE, lambda: audit.alive, audit.start)
                    yield services_settings, client, services
            finally:
                audit.stop()
                client.close()


def _drain_counts(client: ClickHouseClient, db: str, lot: str) -> tuple[int, int, int, int, int]:
    q = "{lot:String}"
    row = client.query(
        f"""SELECT
              (SELECT count() FROM {db}.ground_truth FINAL WHERE lot = {q}) AS truth,
              (SELECT uniqExact(unit_id) FROM (
                  SELECT unit_id FROM {db}.inspections FINAL WHERE lot = {q}
                  UNION ALL SELECT unit_id FROM {db}.unit_verdicts FINAL WHERE lot = {q})) AS decided,
              (SELECT uniqExactIf(unit_id, verdict != 'pass') FROM {db}.inspections FINAL WHERE lot = {q}) AS rejected,
              (SELECT count() FROM {db}.actuations FINAL WHERE lot = {q}) AS fired,
              (SELECT count() FROM {db}.gate_events FINAL WHERE lot = {q}) AS at_gate""",
        {"lot": lot},
    ).rows[0]
    return int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4])


def _unaudited(client: ClickHouseClient, db: str, lot: str) -> int:
    """Inspected units of the lot still without their decision record in the audit trail (the audit
    service appends them after the sink stored them). Asked only once the rest is drained: it reads
    the lot's decisions out of the records' JSON, from the lot's first verdict on."""
    q = "{lot:String}"
    row = client.query(
        f"""SELECT
              (SELECT uniqExact(unit_id) FROM {db}.inspections FINAL WHERE lot = {q}) -
              (SELECT uniqExact(JSONExtractString(detail, 'unit_id')) FROM {db}.audit_records
                 WHERE action = '{DECISION_ACTION}'
                   AND time >= (SELECT min(inferred_time) FROM {db}.inspections WHERE lot = {q})
                   AND JSONExtractString(detail, 'lot') = {q})""",
        {"lot": lot},
    ).rows[0]
    return int(row[0])


def wait_drained(
    client: ClickHouseClient, db: str, lot: str, published: int, stop: threading.Event, timeout_s: float = DRAIN_TIMEOUT_S
) -> None:
    """Probe until every published unit is decided and stored and has been at the reject gate
    (one gate event each), and every reject is recorded. A reject the gate did not fire (a
    missed window, an unconfirmed fire) never gets a record: after `FIRE_RECORD_GRACE_S` the
    wait ends anyway, and the report and reconciliation show those units instead of a timeout."""
    deadline = time.monotonic() + timeout_s
    counts = (0, 0, 0, 0, 0)
    unaudited = -1  # not asked yet
    all_at_gate: float | None = None
    while time.monotonic() < deadline and not stop.is_set():
        counts = _drain_counts(client, db, lot)
        truth, decided, rejected, fired, at_gate = counts
        if truth >= published and decided >= published and at_gate >= published:
            all_at_gate = all_at_gate or time.monotonic()
            if fired >= rejected or time.monotonic() - all_at_gate > FIRE_RECORD_GRACE_S:
                unaudited = _unaudited(client, db, lot)
                if unaudited <= 0:
                    return
        stop.wait(0.25)
    raise DrainTimeout(
        f"after {timeout_s:.0f} s: published {published}, truth stored {counts[0]}, "
        f"verdicts stored {counts[1]}, rejects {counts[2]}, fired {counts[3]}, at the gate {counts[4]}"
        + (f", inspected units without their audit decision record {unaudited}" if unaudited > 0 else "")
    )


def audit_line(resolved: Settings, client: ClickHouseClient, action: str, reason: str, **detail: object) -> None:
    """Record the simulated line's start or stop in the audit trail (system chain)."""
    trail = AuditTrail.from_settings(resolved, client)
    try:
        trail.record(AuditEvent(action, subject=resolved.simulator.line, user=os_user(), role="system",
                                reason=reason, detail=dict(detail)))
    finally:
        trail.close()


def run_demo(settings: Settings, duration_s: float, workers: int = 1) -> RunReport:
    with pipeline_stack(settings, workers) as (resolved, client, services):
        publisher = FramePublisher(resolved)
        log.info("simulated line running for %.0f s at %.1f units/s", duration_s, resolved.simulator.rate_per_s)
        audit_line(resolved, client, "line.start", "linesight demo", rate_per_s=resolved.simulator.rate_per_s)
        lot = run_simulated_line(resolved, publisher, services.stop_event, duration_s=duration_s)
        publisher.close()
        audit_line(resolved, client, "line.stop", "linesight demo: run finished", lot=lot,
                   published=publisher.stats.published)
        db = resolved.clickhouse.database
        wait_drained(client, db, lot, publisher.stats.published, services.stop_event)
        return build_report(client, db, lot, positive_release=resolved.plc.positive_release)


def run_up(settings: Settings, workers: int = 1) -> None:
    """Run the stack and a simulated line until Ctrl-C / SIGTERM, then drain and stop."""
    with pipeline_stack(settings, workers) as (resolved, client, services):
        line_stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: line_stop.set())
        store = resolved.clickhouse.url or resolved.chdb_dir
        print(f"LineSight is up. Kafka {resolved.kafka.bootstrap_servers}, Triton {resolved.triton.url}, "
              f"ClickHouse {store}. Ctrl-C stops.", flush=True)
        print(f"Dashboard: {services.dashboard_url} (log in with a user from `linesight users add`)", flush=True)
        publisher = FramePublisher(resolved)
        audit_line(resolved, client, "line.start", "linesight up", rate_per_s=resolved.simulator.rate_per_s)
        lot = run_simulated_line(resolved, publisher, line_stop)
        publisher.close()
        audit_line(resolved, client, "line.stop", "linesight up: Ctrl-C / SIGTERM", lot=lot,
                   published=publisher.stats.published)
        print(f"line stopped; lot {lot}: {publisher.stats.published} units published; draining ...", flush=True)
        wait_drained(client, resolved.clickhouse.database, lot, publisher.stats.published, services.stop_event, 60.0)
        print("every published unit is decided and stored; stopping services", flush=True)
