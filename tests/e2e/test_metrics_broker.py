"""/metrics of a real service on the real (embedded) broker: the alert service consumes results,
raises an alert, and its API's /metrics, scraped over HTTP and parsed with prometheus_client's
parser, shows the messages, the batch, the alert and the consumer lag of its group."""

from __future__ import annotations

import threading
import time
import uuid

from support import scrape

from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.service import AlertPublisher, AlertService, run_alert_service, serve_alerts_api
from pipeline.core.health import HealthState
from pipeline.core.times import now_ns
from pipeline.embedded.process import free_port
from pipeline.kafka.clients import flush_or_raise, make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings
from pipeline.wire.messages import InspectionResult

TOPICS = ("topic_frames", "topic_results", "topic_rejects", "topic_deadletter", "topic_truth", "topic_actuations",
          "topic_heartbeats", "topic_gate_events", "topic_alarms", "topic_audit", "topic_alerts",
          "topic_camera_status")


def test_alert_service_metrics_move_with_real_work(broker: str, embedded_settings: Settings) -> None:
    prefix = f"mx{uuid.uuid4().hex[:8]}"
    k = embedded_settings.kafka
    settings = embedded_settings.model_copy(update={"kafka": k.model_copy(update={
        "bootstrap_servers": broker, **{f: f"{prefix}.{getattr(k, f)}" for f in TOPICS}})})
    k, group = settings.kafka, settings.services.alerts_group
    ensure_topics(settings)

    health = HealthState("alerts")
    service = AlertService(settings, AlertEngine(AlertConfig(run_length=4)), AlertPublisher(settings,
                                                                                            metrics=health.metrics))
    stop = threading.Event()
    server = serve_alerts_api(service, health, free_port(), token="", host="127.0.0.1")
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    thread = threading.Thread(target=run_alert_service, args=(service, stop, health), daemon=True)
    thread.start()
    try:
        before = scrape(url)
        assert not [key for key in before if key[0] == "linesight_messages_consumed_total"], "nothing consumed yet"
        producer = make_producer(k, "test-results")
        t = now_ns()
        for i in range(5):
            r = InspectionResult(f"u{i}", "line-7", "cam-1", "p", "lot", "reject", "model", True, "crack", 0.9, 0.5,
                                 "m", "1", t, t, t, "w")
            producer.produce(k.topic_results, key=b"line-7", value=r.to_json())  # one partition
        flush_or_raise(producer, 10)

        consumed = ("linesight_messages_consumed_total", (("service", "alerts"), ("topic", k.topic_results)))
        deadline = time.monotonic() + 60
        samples = before
        lag: dict[tuple[str, str], float] = {}
        while time.monotonic() < deadline:
            samples = scrape(url)
            lag = {(dict(labels)["topic"], dict(labels)["partition"]): v for (name, labels), v in samples.items()
                   if name == "linesight_consumer_lag" and dict(labels)["group"] == group}
            results_lag = [v for (topic, _), v in lag.items() if topic == k.topic_results]
            if samples.get(consumed) == 5 and results_lag and not any(results_lag):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=15)
        server.shutdown()
        server.server_close()

    assert samples.get(consumed) == 5, {key: v for key, v in samples.items() if key[0].startswith("linesight_")}
    raised = {dict(labels)["kind"]: v for (name, labels), v in samples.items()
              if name == "linesight_alert_changes_total" and dict(labels)["line"] == "line-7"}
    assert raised.get("reject_run", 0) >= 1, raised
    batches = samples[("linesight_batch_size_count", (("stage", "alerts"),))]
    assert batches >= 1 and samples[("linesight_batch_size_sum", (("stage", "alerts"),))] >= 5
    # Every results partition it holds is caught up (lag 0, from the consumer's own position).
    results_lag = [v for (topic, _), v in lag.items() if topic == k.topic_results]
    assert results_lag and not any(results_lag), lag
