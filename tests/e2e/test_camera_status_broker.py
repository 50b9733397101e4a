"""Camera statuses over the real (embedded) broker: the gateway's `FramePublisher.status` to the
alert service, which raises and clears camera_lost on ``linesight.alerts``; the broker's share of
the one second the issue allows is measured here."""

from __future__ import annotations

import threading
import time
import uuid

from pipeline.alerts.engine import AlertEngine
from pipeline.alerts.record import AlertRecord
from pipeline.alerts.service import AlertPublisher, AlertService, alert_config, run_alert_service
from pipeline.core.health import HealthState
from pipeline.core.times import now_ns
from pipeline.gateway.publisher import FramePublisher
from pipeline.kafka.clients import make_consumer
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import KafkaSettings, Settings
from pipeline.wire.messages import CameraStatus

TOPICS = [f for f in KafkaSettings.model_fields if f.startswith("topic_")]


def test_a_disconnected_camera_status_becomes_camera_lost_on_the_alerts_topic(
    broker: str, embedded_settings: Settings
) -> None:
    prefix = f"cs{uuid.uuid4().hex[:8]}"
    k = embedded_settings.kafka
    settings = embedded_settings.model_copy(update={"kafka": k.model_copy(update={
        "bootstrap_servers": broker, **{f: f"{prefix}.{getattr(k, f)}" for f in TOPICS}})})
    ensure_topics(settings)
    service = AlertService(settings, AlertEngine(alert_config(settings)), AlertPublisher(settings))
    stop, health = threading.Event(), HealthState("alerts")
    thread = threading.Thread(target=run_alert_service, args=(service, stop, health), daemon=True)
    gateway = FramePublisher(settings)
    consumer = make_consumer(settings.kafka, f"read-{prefix}", "test-alerts", **{"fetch.wait.max.ms": 50})
    consumer.subscribe([settings.kafka.topic_alerts])

    def status(connected: bool) -> CameraStatus:
        t = now_ns()
        return CameraStatus("line-c", "top", "CAM-1", connected, 10, 10, 10.0, 10.0, 0, 0, 0, 0,
                            t - 10**8, 0, 0, t)

    def next_alert(timeout_s: float) -> AlertRecord:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = consumer.poll(0.05)
            if m is not None and not m.error():
                rec = AlertRecord.from_json(m.value())
                if rec.kind == "camera_lost":
                    return rec
        raise AssertionError(f"no camera_lost record within {timeout_s} s")

    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not health.snapshot()["ready"] and time.monotonic() < deadline:  # consumer group joined
            time.sleep(0.05)
        assert health.snapshot()["ready"], health.snapshot()
        lines = service.engine.lines
        while not (lines.get("line-c") and lines["line-c"].cameras.cameras) and time.monotonic() < deadline:
            gateway.status(status(True))  # as the gateway does every 0.25 s: the link is warm
            time.sleep(0.25)
        gateway.status(status(False))
        sent = time.monotonic()
        while ("line-c", "camera_lost") not in service.engine.book.active and time.monotonic() < sent + 30:
            time.sleep(0.005)
        raised = time.monotonic() - sent
        assert raised < 0.5, f"camera_lost raised {raised:.3f} s after the status was sent"  # ~0.1 s measured
        lost = next_alert(30)
        delay = time.monotonic() - sent
        assert (lost.state, lost.line, lost.severity) == ("active", "line-c", "critical")
        assert "top (CAM-1) disconnected" in lost.message
        gateway.status(status(True))
        cleared = next_alert(30)
        assert cleared.state == "cleared" and cleared.alert_id == lost.alert_id
        print(f"disconnected status to camera_lost raised in the alert service {raised:.3f} s, "
              f"read back from the alerts topic {delay:.3f} s")
    finally:
        stop.set()
        thread.join(timeout=30)
        consumer.close()
        gateway.close()
