"""Prometheus metrics of every LineSight service, served as ``/metrics`` (docs/observability.md).

Why one catalogue: the Grafana dashboard, the docs and the tests name these metrics, so every
name, label set and bucket layout is written once, in `SPECS`. Why a registry per service: the
embedded stack runs several services in one process (and tests run many), so each service builds
its own `Metrics` on its own `CollectorRegistry` instead of prometheus_client's global one. A
family is registered on first use, so a service exports only the metrics it actually records.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

Kind = Literal["counter", "gauge", "histogram"]

# Seconds; capture->verdict is tens of ms at line rate, seconds in a backlog.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
# Messages per batch: the worker's batches (batch_size 16 by default) and the consumer loops' (up to 1000).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
# Verdict-to-fire-time margin at the gate, seconds: negative is a verdict after the fire time.
MARGIN_BUCKETS = (-1.0, -0.1, 0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class Spec:
    kind: Kind
    name: str  # without the _total suffix prometheus_client adds to counters
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def sample_names(self) -> set[str]:
        """The series names this metric exposes (what PromQL queries name)."""
        if self.kind == "counter":
            return {f"{self.name}_total", f"{self.name}_created"}
        if self.kind == "histogram":
            return {f"{self.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        return {self.name}


SPECS: dict[str, Spec] = {s.name: s for s in (
    # inspection worker
    Spec("counter", "linesight_frames", "Frames the inspection worker decided and whose outputs the broker confirmed."),
    Spec("counter", "linesight_verdicts", "Verdicts published by the inspection worker (cause: model or failsafe).",
         ("line", "verdict", "cause")),
    Spec("histogram", "linesight_capture_to_verdict_seconds", "Capture time to verdict, per unit, at the worker.",
         ("line",), LATENCY_BUCKETS),
    Spec("histogram", "linesight_worker_stage_seconds", "Worker latency by stage: broker_to_worker (fetch wait "
         "and queueing), worker_to_decided (checks, Triton, verdict), decided_to_confirmed (publish, broker ack).",
         ("stage",), LATENCY_BUCKETS),
    Spec("histogram", "linesight_batch_size", "Messages per batch: the worker's inference batches (stage=inspect) "
         "and each consumer loop's commit batches (stage=service name).", ("stage",), BATCH_BUCKETS),
    Spec("counter", "linesight_dead_letters", "Frames dead-lettered (and their units fail-safe rejected) by the "
         "worker, by the stage that refused them.", ("line", "stage")),
    # reject actuator and camera gateway
    Spec("counter", "linesight_failsafe_rejects", "Units rejected without a model verdict: at the gate "
         "(cause late or failsafe) and at the camera gateway (cause gateway).", ("line", "cause")),
    Spec("counter", "linesight_gate_events", "What happened to each unit at the reject gate.",
         ("line", "outcome", "cause")),
    Spec("histogram", "linesight_gate_margin_seconds", "Verdict-to-fire-time margin of units whose verdict "
         "reached the actuator (negative: after the fire time).", ("line",), MARGIN_BUCKETS),
    Spec("gauge", "linesight_failsafe_active", "1 while the actuator's watchdog rejects every unit."),
    Spec("gauge", "linesight_alarms_active", "Alarms the actuator holds open."),
    # consumer services (sink, actuator, alerts, worker)
    Spec("counter", "linesight_messages_consumed", "Messages a consumer loop handled and committed.",
         ("service", "topic")),
    Spec("gauge", "linesight_consumer_lag", "Messages behind the partition's high watermark, from the "
         "consumer's own position.", ("topic", "partition", "group")),
    # audit service (the audit trail's one writer)
    Spec("counter", "linesight_audit_events", "Submitted audit events the audit service handled: appended, "
         "duplicate (already in the trail: a redelivery) or refused (dead-lettered).", ("outcome",)),
    Spec("gauge", "linesight_audit_last_seal_timestamp_seconds", "When the audit service last anchored a "
         "signed seal of every chain's head (Unix time)."),
    # operator dashboard
    Spec("counter", "linesight_dashboard_requests", "Dashboard HTTP requests by route and status code "
         "(401/403: refused without a valid session or CSRF token).", ("route", "status")),
    Spec("counter", "linesight_dashboard_logins", "Dashboard log-ins by outcome: ok, refused (unknown user, "
         "wrong password, disabled), locked_out (too many failures).", ("outcome",)),
    # alerts
    Spec("counter", "linesight_alert_changes", "Alert records published (raised, updated, cleared, acknowledged).",
         ("line", "kind", "severity", "state")),
    # camera gateway
    Spec("counter", "linesight_gateway_units", "Units the camera gateway identified.", ("line",)),
    Spec("counter", "linesight_gateway_frames_published", "Frames the camera gateway published, per station.",
         ("line", "station")),
    Spec("gauge", "linesight_cameras_connected", "Station cameras the gateway has open.", ("line",)),
)}


class Metrics:
    """One service's metrics on its own registry; each family is created when first used."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._made: dict[str, Counter | Gauge | Histogram] = {}
        self._lock = threading.Lock()

    def _family(self, name: str) -> Counter | Gauge | Histogram:
        with self._lock:
            made = self._made.get(name)
            if made is None:
                s = SPECS[name]
                if s.kind == "counter":
                    made = Counter(s.name, s.help, s.labels, registry=self.registry)
                elif s.kind == "gauge":
                    made = Gauge(s.name, s.help, s.labels, registry=self.registry)
                else:
                    made = Histogram(s.name, s.help, s.labels, registry=self.registry, buckets=s.buckets)
                self._made[name] = made
            return made

    def counter(self, name: str) -> Counter:
        made = self._family(name)
        assert isinstance(made, Counter), name
        return made

    def gauge(self, name: str) -> Gauge:
        made = self._family(name)
        assert isinstance(made, Gauge), name
        return made

    def histogram(self, name: str) -> Histogram:
        made = self._family(name)
        assert isinstance(made, Histogram), name
        return made

    def declare_all(self) -> None:
        """Register every family (the tests' view of everything a service could export)."""
        for name in SPECS:
            self._family(name)

    def exposition(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Totals:
    """Counters fed from running totals a component keeps itself (the camera gateway's stats):
    each `advance` adds what the total grew by since the last call."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._last: dict[tuple[str, ...], float] = {}

    def advance(self, total: float, *labels: str) -> None:
        grown = total - self._last.get(labels, 0.0)
        if grown > 0:
            self._counter.labels(*labels).inc(grown)
        self._last[labels] = total


def exported_names() -> set[str]:
    """Every series name a LineSight service can expose."""
    return {n for s in SPECS.values() for n in s.sample_names()}
