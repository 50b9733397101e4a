"""The alert service: consumes frames, results, heartbeats and the camera gateway's camera
statuses, runs the `AlertEngine`, publishes every alert change to ``linesight.alerts`` (the
ClickHouse sink stores them in ``alerts``), and commits its offsets only after the broker
acknowledged those alerts (`run_batches`).

A ticker thread runs the time-driven checks (a line that stopped sending frames, stale worker
heartbeats, the p-chart interval) once a second, so silence raises an alert even when no message
arrives. With embedded chDB it runs inside the stack process next to the sink and the dashboard;
in production it is `linesight alerts`, and the dashboard (`linesight dashboard`) reads its state
and sends acknowledgements through `serve_alerts_api` (bearer token; docs/deployment.md).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from confluent_kafka import KafkaException, Message

from pipeline.alerts.cameras import CameraLimits
from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.record import AlertRecord
from pipeline.alerts.reference import CardReferences
from pipeline.audit.record import CHALLENGE_RUN_ACTION, SYSTEM_CHAIN
from pipeline.core.health import HealthState, send_metrics
from pipeline.core.metrics import Metrics
from pipeline.core.times import now_ns
from pipeline.kafka.clients import RenewingProducer, bootstrap, flush_or_raise, make_consumer
from pipeline.kafka.commit_loop import run_batches
from pipeline.recipes.lookup import review_spec_for
from pipeline.settings import Settings
from pipeline.wire.messages import CameraStatus, FrameMeta, Heartbeat, InspectionResult, MessageError

log = logging.getLogger(__name__)


# Tansu holds a fetch for fetch.wait.max.ms even when data is there (librdkafka's default: 500 ms).
ALERT_FETCH_WAIT_MS = 50


def alert_config(settings: Settings) -> AlertConfig:
    s = settings.services
    return AlertConfig(interval_s=s.alerts_interval_s, run_length=s.alerts_run_length,
                       missing_after_s=s.alerts_missing_after_s,
                       heartbeat_stale_s=max(6.0, 3 * settings.watchdog.heartbeat_interval_s),
                       cameras=CameraLimits(silent_s=s.alerts_camera_silent_s,
                                            rate_window_s=s.alerts_camera_rate_window_s,
                                            rate_tolerance=s.alerts_camera_rate_tolerance,
                                            rate_sustain_s=s.alerts_camera_rate_sustain_s,
                                            gap_factor=s.alerts_camera_gap_factor,
                                            gap_clear_s=s.alerts_camera_gap_clear_s),
                       challenge_grace_s=s.alerts_challenge_grace_s)


class AlertPublisher:
    """Produces alert records and waits for the broker's acknowledgement of each (re-sent by a new
    producer when the broker lost this one's id: `RenewingProducer`)."""

    def __init__(self, settings: Settings, producer: RenewingProducer | None = None,
                 metrics: Metrics | None = None) -> None:
        self.topic = settings.kafka.topic_alerts
        self._changes = (metrics if metrics is not None else Metrics()).counter("linesight_alert_changes")
        self.producer = producer if producer is not None else RenewingProducer(
            settings.kafka, "linesight-alerts", logger=logging.getLogger("linesight.alerts.librdkafka")
        )
        self._errors: list[str] = []
        self._lock = threading.Lock()

    def _delivered(self, err: object, msg: object) -> None:
        if err is not None:
            self._errors.append(str(err))

    def publish(self, records: Sequence[AlertRecord], timeout_s: float = 30.0) -> None:
        if not records:
            return
        with self._lock:
            for rec in records:
                self.producer.produce(self.topic, key=rec.alert_id.encode(), value=rec.to_json(),
                                      on_delivery=self._delivered)
            flush_or_raise(self.producer, timeout_s)
            if self._errors:
                errors, self._errors = self._errors, []
                raise KafkaException(f"alerts not delivered: {'; '.join(errors)}")
        for rec in records:
            self._changes.labels(rec.line, rec.kind, str(rec.severity), str(rec.state)).inc()


class AlertService:
    def __init__(self, settings: Settings, engine: AlertEngine, publisher: AlertPublisher) -> None:
        k = settings.kafka
        self.settings = settings
        self.engine = engine
        self.publisher = publisher
        # The audit topic for signed challenge runs (they clear challenge_overdue): only the system
        # chain's records are read, the inspection decisions (keyed by their own chains) are skipped.
        self.topics = [k.topic_frames, k.topic_results, k.topic_heartbeats, k.topic_camera_status, k.topic_audit]

    def handle(self, messages: Sequence[Message]) -> None:
        k = self.settings.kafka
        out: list[AlertRecord] = []
        for m in messages:
            now = now_ns()
            try:
                if m.topic() == k.topic_frames:
                    out += self.engine.on_frame(FrameMeta.from_headers(m.headers()), m.value() or b"", now)
                elif m.topic() == k.topic_results:
                    out += self.engine.on_result(InspectionResult.from_json(m.value()), now)
                elif m.topic() == k.topic_heartbeats:
                    out += self.engine.on_heartbeat(Heartbeat.from_json(m.value()), now)
                elif m.topic() == k.topic_camera_status:
                    out += self.engine.on_camera_status(CameraStatus.from_json(m.value()), now)
                elif m.topic() == k.topic_audit and m.key() == SYSTEM_CHAIN.encode():
                    out += self._audit_record(m.value(), now)
            except MessageError as exc:  # the worker and sink dead-letter these; alerts skip them
                log.debug("alerts skip %s:%s:%s: %s", m.topic(), m.partition(), m.offset(), exc)
        self.publisher.publish(out)

    def _audit_record(self, value: bytes | None, now: int) -> list[AlertRecord]:
        """A changeover or a deploy makes a challenge due; a passed challenge run clears it."""
        try:
            doc = json.loads(value or b"")
        except ValueError:
            return []
        if not isinstance(doc, dict) or not isinstance(doc.get("subject"), str):
            return []
        action, subject, value_text = doc.get("action"), doc["subject"], str(doc.get("new_value", ""))
        if action == CHALLENGE_RUN_ACTION:
            return self.engine.on_challenge(subject, value_text == "passed", now)
        if action == "recipe.activate":
            return self.engine.on_judge_change(now, f"changeover to {value_text}", line=subject)
        if action in ("model.deploy", "model.rollback"):
            return self.engine.on_judge_change(now, f"{action} of {subject} to v{value_text}", model=subject)
        return []

    def tick(self) -> None:
        self.publisher.publish(self.engine.tick(now_ns()))

    def acknowledge(self, alert_id: str, user: str) -> AlertRecord:
        rec = self.engine.acknowledge(alert_id, user, now_ns())
        self.publisher.publish([rec])
        return rec


def run_alert_service(service: AlertService, stop: threading.Event, health: HealthState) -> None:
    """Consume until `stop`, with the once-a-second ticker; commits after alerts are acknowledged."""
    done = threading.Event()  # this run's ticker ends with it (a restarted run starts its own)

    def ticker() -> None:
        while not stop.wait(1.0) and not done.is_set():
            try:
                service.tick()
            except Exception:  # noqa: BLE001 - logged; the next tick retries (the state is in memory)
                log.exception("alert tick failed")

    thread = threading.Thread(target=ticker, name="alerts-ticker", daemon=True)
    thread.start()
    try:
        # A lost camera must be alerted within a second of the gateway saying so: with a short fetch
        # wait and a short consume() timeout (it waits out its timeout unless a whole batch came),
        # a camera status becomes its alert in 0.06-0.11 s on the embedded broker (0.3-0.4 s with
        # the 0.2 s default timeout and a 50 ms fetch wait).
        consumer = make_consumer(service.settings.kafka, service.settings.services.alerts_group, "linesight-alerts",
                                 **{"fetch.wait.max.ms": ALERT_FETCH_WAIT_MS})
        run_batches(consumer, service.topics, service.handle, health, stop, max_batch=200, max_wait_s=0.05,
                    poll_timeout_s=0.05, group=service.settings.services.alerts_group)
    finally:
        done.set()
        thread.join(timeout=5.0)


class AlertThread(threading.Thread):
    """One run of the alert service's consumer on a thread. It ends on `stop` or an error (kept in
    `health`); `restarted` starts a new run on the same engine and health, so the dashboard
    reading them keeps its state: a supervisor restarts it like the sink thread."""

    def __init__(self, service: AlertService, stop: threading.Event, health: HealthState) -> None:
        super().__init__(name="alerts", daemon=True)
        self.service, self.stop, self.health = service, stop, health

    def run(self) -> None:
        try:
            run_alert_service(self.service, self.stop, self.health)
        except Exception:  # noqa: BLE001 - reported in health; the owner restarts or stops
            log.exception("alert service stopped with an error")
            self.health.set_ready(False)
            self.health.tick(error="alert service stopped with an error; see log")

    def restarted(self) -> AlertThread:
        self.health.tick(error="")
        thread = AlertThread(self.service, self.stop, self.health)
        thread.start()
        return thread


def start_alert_service(settings: Settings, stop: threading.Event, threads: list[threading.Thread],
                        publisher: AlertPublisher | None = None) -> tuple[AlertService, HealthState]:
    """The one way to start the alert service: an `AlertThread` consuming until `stop`, appended
    to `threads`. A crash ends the thread with the error in `health`: the embedded stack restarts
    it, `linesight alerts` stops. Await `health`'s ready before relying on it."""
    recipes_dir = settings.stream.recipes_dir
    engine = AlertEngine(alert_config(settings), CardReferences(settings.triton.model_repository),
                         lines=list(settings.lines),
                         review_limit=functools.lru_cache(maxsize=256)(  # a ref's rules never change
                             lambda ref: review_spec_for(recipes_dir, ref)[0].max_review_fraction))
    health = HealthState("alerts")
    service = AlertService(settings, engine, publisher or AlertPublisher(settings, metrics=health.metrics))
    thread = AlertThread(service, stop, health)
    thread.start()
    threads.append(thread)
    return service, health


def serve_alerts_api(service: AlertService, health: HealthState, port: int, token: str,
                     host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """`/healthz` and `/readyz` (open, like `serve_health`), and for the dashboard, with
    ``Authorization: Bearer <token>``: ``GET /state`` (the engine's snapshot), ``GET
    /rejects/<unit>`` (the kept frame), ``POST /alerts/<id>/ack`` with ``{"user": ...}`` (404 unknown,
    409 already acknowledged). Without a configured token those three are refused (403)."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, default=str).encode())

        def _authorized(self) -> bool:
            sent = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not token:
                self._json(403, {"error": "no alert API token configured (LINESIGHT_SERVICES__ALERTS_API_TOKEN_FILE)"})
                return False
            if not hmac.compare_digest(sent.encode(), token.encode()):
                self._json(401, {"error": "bad or missing bearer token"})
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/metrics":  # open like /healthz: counts and states, nothing a token guards
                send_metrics(self, health.metrics)
            elif self.path in ("/healthz", "/readyz"):
                snap = health.snapshot()
                self._json(200 if snap["alive" if self.path == "/healthz" else "ready"] else 503, snap)
            elif self.path == "/state":
                if self._authorized():
                    self._json(200, service.engine.snapshot(now_ns()))
            elif self.path.startswith("/rejects/"):
                if self._authorized():
                    found = service.engine.reject_image(unquote(self.path.removeprefix("/rejects/")))
                    if found is None:
                        self._json(404, {"error": "no frame kept for this unit"})
                    else:
                        self._send(200, found[0], found[1])
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            parts = self.path.split("/")
            if len(parts) != 4 or parts[1] != "alerts" or parts[3] != "ack":
                self._json(404, {"error": "not found"})
                return
            if not self._authorized():
                return
            try:
                length = min(int(self.headers.get("Content-Length", "0")), 64 * 1024)
                user = str(json.loads(self.rfile.read(length) or b"{}").get("user", ""))
            except (ValueError, AttributeError):
                user = ""
            if not user:
                self._json(400, {"error": "body must be {\"user\": NAME}"})
                return
            try:
                rec = service.acknowledge(unquote(parts[2]), user)
            except KeyError:
                self._json(404, {"error": f"no alert {unquote(parts[2])}"})
            except ValueError as exc:
                self._json(409, {"error": str(exc)})
            except KafkaException as exc:
                self._json(503, {"error": f"acknowledgement not published: {exc}"})
            else:
                self._json(200, asdict(rec))

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="alerts-api", daemon=True).start()
    return server


def run_alerts(settings: Settings, stop: threading.Event,
               started: Callable[[ThreadingHTTPServer], None] | None = None) -> None:
    """`linesight alerts`: the alert service and its API on ``services.alerts_health_port`` until
    `stop` (set by a signal) or until the service dies (no supervisor here: the container restarts)."""
    bootstrap(settings.kafka)  # no broker configured: one clear error before any thread starts
    threads: list[threading.Thread] = []
    service, health = start_alert_service(settings, stop, threads)
    token = settings.services.resolved_alerts_api_token()
    if not token:
        log.warning("no alert API token (LINESIGHT_SERVICES__ALERTS_API_TOKEN_FILE): the dashboard cannot "
                    "read this service; alerts are still published to %s", settings.kafka.topic_alerts)
    server = serve_alerts_api(service, health, settings.services.alerts_health_port, token)
    try:
        if started is not None:
            started(server)
        while not stop.wait(0.5) and all(t.is_alive() for t in threads):
            pass
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        for thread in threads:
            thread.join(timeout=30.0)
    error = health.snapshot().get("error")
    if error:
        raise RuntimeError(error)
