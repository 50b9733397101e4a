"""A per-line reject actuator on the real embedded broker (Tansu) reads only its line's partitions
(docs/scale.md, "Partitioning by line"): it `assign()`s line A's pinned partition of captures,
results, rejects and heartbeats, and still admits, passes and fires A's units, with its watchdog
fed by worker heartbeats sent to every partition, while line B's captures and verdicts flow on
another partition it never fetches. Its offsets are committed under its own per-line group.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from support import eventually

from pipeline.actuation import service as actuation
from pipeline.core.health import HealthState
from pipeline.core.times import now_ns
from pipeline.gateway.publisher import FramePublisher
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.partitioning import every_partition, line_partition
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.settings.actuation import LineTimingSettings, WatchdogSettings
from pipeline.wire.messages import FrameMeta, GateEventRecord, Heartbeat, InspectionResult, RejectCommand

IMAGE = (PROJECT_ROOT / "tests" / "data" / "one.png").read_bytes()
PRODUCT = "tablet-round-white-10mm"
A, B = "line-a", "line-b"
TOPICS = ("topic_frames", "topic_captures", "topic_results", "topic_rejects", "topic_heartbeats", "topic_deadletter",
          "topic_gate_events", "topic_alarms", "topic_actuations", "topic_unit_verdicts", "topic_truth")


@pytest.fixture
def line_settings(embedded_settings: Settings, broker: str) -> Settings:
    base, k = embedded_settings, embedded_settings.kafka
    suffix = uuid.uuid4().hex[:6]
    # 300 mm at 100 mm/s: 3 s from capture to the gate, so the derived watchdog timeout is ~2.6 s.
    timing = LineTimingSettings(conveyor_speed_mm_s=100.0, camera_to_gate_mm=300.0, gate_window_mm=20.0)
    return base.model_copy(update={
        "kafka": k.model_copy(update={
            "bootstrap_servers": broker, "partitions": 3, "line_partitions": {A: 0, B: 2},
        } | {name: f"{getattr(k, name)}-lp-{suffix}" for name in TOPICS}),
        "services": base.services.model_copy(update={"actuator_group": f"lp-actuator-{suffix}", "actuator_line": A}),
        "lines": {A: timing, B: timing},
        "plc": base.plc.model_copy(update={"enabled": False}),  # the actuator's in-process gate
        "watchdog": WatchdogSettings(clear_after_s=0.5, heartbeat_interval_s=0.25),
    })


class Spy:
    """What the line-A actuator's consumer was assigned and every (topic, partition) it handled."""

    def __init__(self) -> None:
        self.consumer: Consumer | None = None
        self.handled: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def seen(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self.handled)


@pytest.fixture
def actuator_a(line_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HealthState, Spy]]:
    ensure_topics(line_settings)
    spy = Spy()

    def consumer(*args: Any, **kwargs: Any) -> Consumer:
        spy.consumer = make_consumer(*args, **kwargs)
        return spy.consumer

    handle = actuation.Actuator.handle

    def spying(self: actuation.Actuator, messages: Sequence[Message]) -> None:
        with spy._lock:
            spy.handled += [(str(m.topic()), int(m.partition() or 0)) for m in messages]
        handle(self, messages)

    monkeypatch.setattr(actuation, "make_consumer", consumer)
    monkeypatch.setattr(actuation.Actuator, "handle", spying)
    stop, health = threading.Event(), HealthState("actuator")
    worker_beats = threading.Thread(target=_worker_heartbeats, args=(line_settings, stop), daemon=True)
    worker_beats.start()
    thread = threading.Thread(target=actuation.run_actuator, args=(line_settings, stop, health), daemon=True)
    thread.start()
    try:
        yield health, spy
    finally:
        stop.set()
        thread.join(30)
        worker_beats.join(5)


def _worker_heartbeats(settings: Settings, stop: threading.Event) -> None:
    """A worker's heartbeat as streams/app.py sends it: to every partition, Triton ready."""
    producer = make_producer(settings.kafka, "lp-worker")
    while not stop.is_set():
        beat = Heartbeat("lp-worker", "worker", now_ns(), True, "").to_json()
        for partition in every_partition(settings.kafka):
            producer.produce(settings.kafka.topic_heartbeats, key=b"lp-worker", value=beat, partition=partition)
        producer.poll(0)
        stop.wait(settings.watchdog.heartbeat_interval_s)
    producer.flush(5)


def _verdicts(settings: Settings, units: dict[str, tuple[str, str, int]]) -> None:
    """What the worker publishes for each unit: its result (and a reject command for a reject),
    keyed by line on the line's partition."""
    k = settings.kafka
    producer = make_producer(k, "lp-verdicts")
    for unit, (line, verdict, capture) in units.items():
        result = InspectionResult(
            unit_id=unit, line=line, camera="cam-1", product=PRODUCT, lot="LP", verdict=verdict,  # type: ignore[arg-type]
            cause="model", inspected=True, defect="none" if verdict == "pass" else "chip", score=0.1, threshold=0.5,
            model_name="m", model_version="1", capture_ns=capture, received_ns=capture, inferred_ns=now_ns(), worker="w",
        )
        where = line_partition(k, line)
        producer.produce(k.topic_results, key=line.encode(), value=result.to_json(), partition=where)
        if verdict == "reject":
            command = RejectCommand(unit, line, "cam-1", "LP", "model", "chip", capture, now_ns(), verdict="reject")
            producer.produce(k.topic_rejects, key=line.encode(), value=command.to_json(), partition=where)
    assert producer.flush(10) == 0


class GateEvents:
    """Every gate event on the topic, read from the start and kept across polls."""

    def __init__(self, settings: Settings) -> None:
        k = settings.kafka
        self.consumer = make_consumer(k, f"lp-read-{uuid.uuid4().hex[:6]}", "lp-read")
        self.consumer.assign([TopicPartition(k.topic_gate_events, p, OFFSET_BEGINNING) for p in every_partition(k)])
        self.events: dict[str, GateEventRecord] = {}

    def poll(self) -> dict[str, GateEventRecord]:
        for m in self.consumer.consume(500, timeout=0.5):
            if m.error() is None:
                record = GateEventRecord.from_json(m.value())
                self.events[record.unit_id] = record
        return self.events


@pytest.mark.timeout(180)
def test_a_line_actuator_reads_only_its_partition_and_still_gates_its_units(
    line_settings: Settings, actuator_a: tuple[HealthState, Spy]
) -> None:
    health, spy = actuator_a
    k = line_settings.kafka
    # Ready: assigned, and its own heartbeat (sent to line A's partition) came back.
    eventually(lambda: health.snapshot()["ready"], 60, "the line-A actuator ready")
    assert spy.consumer is not None
    assert sorted((tp.topic, tp.partition) for tp in spy.consumer.assignment()) == sorted(
        (t, 0) for t in (k.topic_captures, k.topic_results, k.topic_rejects, k.topic_heartbeats))

    publisher = FramePublisher(line_settings)
    units: dict[str, tuple[str, str, int]] = {}
    for line in (A, B):
        for kind in ("pass", "reject", "silent"):  # silent: no verdict ever comes
            unit = f"{line}-{kind}-{uuid.uuid4().hex[:4]}"
            capture = now_ns()
            assert publisher.publish(FrameMeta(unit, line, "cam-1", PRODUCT, capture, "image/png", "LP"), IMAGE)
            units[unit] = (line, kind, capture)
    publisher.close()
    _verdicts(line_settings, {u: v for u, v in units.items() if v[1] != "silent"})

    of_a = {u for u, (line, _, _) in units.items() if line == A}
    reader = GateEvents(line_settings)
    try:
        eventually(lambda: of_a <= set(reader.poll()), 30, "line A's units at the gate")
        events = reader.poll()
    finally:
        reader.consumer.close()
    outcome = {units[u][1]: (events[u].outcome, events[u].cause, events[u].admitted) for u in of_a}
    assert outcome == {"pass": ("passed", "model", True), "reject": ("fired", "model", True),
                       "silent": ("fired", "late", True)}
    # Nothing of line B reached this actuator: not a gate event, not a fetched record.
    assert not set(events) - of_a
    assert spy.seen() and {p for _, p in spy.seen()} == {line_partition(k, A)} == {0}
    assert {t for t, _ in spy.seen()} >= {k.topic_captures, k.topic_results, k.topic_rejects, k.topic_heartbeats}
    assert k.topic_frames not in {t for t, _ in spy.seen()}  # admitted from captures: no image fetched

    # Its offsets are committed under its own group (lines sharing a partition cannot undo each other).
    reader = make_consumer(k, f"{line_settings.services.actuator_group}.{A}", "lp-check")
    try:
        committed = reader.committed([TopicPartition(k.topic_captures, 0), TopicPartition(k.topic_results, 0)],
                                     timeout=10)
    finally:
        reader.close()
    assert all(tp.offset > 0 for tp in committed), committed
