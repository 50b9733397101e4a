"""The alert service: consumes frames, results and heartbeats, runs the `AlertEngine`, publishes
every alert change to ``linesight.alerts`` (the ClickHouse sink stores them in ``alerts``), and
commits its offsets only after the broker acknowledged those alerts (`run_batches`).

A ticker thread runs the time-driven checks (a line that stopped sending frames, stale worker
heartbeats, the p-chart interval) once a second, so silence raises an alert even when no message
arrives. With embedded chDB it runs inside the stack process next to the sink and the dashboard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from confluent_kafka import KafkaException, Message, Producer

from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.record import AlertRecord
from pipeline.consumer_loop import run_batches
from pipeline.health import HealthState
from pipeline.kafka import flush_or_raise, make_consumer, make_producer
from pipeline.messages import FrameMeta, Heartbeat, InspectionResult, MessageError, now_ns
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def alert_config(settings: Settings) -> AlertConfig:
    s = settings.services
    return AlertConfig(interval_s=s.alerts_interval_s, run_length=s.alerts_run_length,
                       missing_after_s=s.alerts_missing_after_s,
                       heartbeat_stale_s=max(6.0, 3 * settings.watchdog.heartbeat_interval_s))


class AlertPublisher:
    """Produces alert records and waits for the broker's acknowledgement of each."""

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self.topic = settings.kafka.topic_alerts
        self.producer = producer or make_producer(
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


class AlertService:
    def __init__(self, settings: Settings, engine: AlertEngine, publisher: AlertPublisher) -> None:
        k = settings.kafka
        self.settings = settings
        self.engine = engine
        self.publisher = publisher
        self.topics = [k.topic_frames, k.topic_results, k.topic_heartbeats]

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
            except MessageError as exc:  # the worker and sink dead-letter these; alerts skip them
                log.debug("alerts skip %s:%s:%s: %s", m.topic(), m.partition(), m.offset(), exc)
        self.publisher.publish(out)

    def tick(self) -> None:
        self.publisher.publish(self.engine.tick(now_ns()))

    def acknowledge(self, alert_id: str, user: str) -> AlertRecord:
        rec = self.engine.acknowledge(alert_id, user, now_ns())
        self.publisher.publish([rec])
        return rec


def run_alert_service(service: AlertService, stop: threading.Event, health: HealthState) -> None:
    """Consume until `stop`, with the once-a-second ticker; commits after alerts are acknowledged."""

    def ticker() -> None:
        while not stop.wait(1.0):
            try:
                service.tick()
            except Exception:  # noqa: BLE001 - logged; the next tick retries (the state is in memory)
                log.exception("alert tick failed")

    thread = threading.Thread(target=ticker, name="alerts-ticker", daemon=True)
    thread.start()
    consumer = make_consumer(service.settings.kafka, service.settings.services.alerts_group, "linesight-alerts")
    try:
        run_batches(consumer, service.topics, service.handle, health, stop, max_batch=200, max_wait_s=0.05)
    finally:
        thread.join(timeout=5.0)
