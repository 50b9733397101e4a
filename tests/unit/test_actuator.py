"""The reject actuator's logic, fed Kafka-shaped messages directly (no broker): admission at
capture, verdicts in time or late, duplicates, watchdog fail-safe, bad input and an unreachable
PLC. The real-process version of the same is tests/e2e/test_failsafe.py.
"""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from typing import Any

import pytest
from confluent_kafka import KafkaError
from support import eventually

from pipeline.actuation.gate import SimulatedGate
from pipeline.actuation.service import Actuator
from pipeline.core.times import now_ns
from pipeline.embedded.process import free_port
from pipeline.kafka.clients import RenewingProducer
from pipeline.settings import Settings
from pipeline.settings.actuation import GateMode, LineTimingSettings, WatchdogSettings
from pipeline.wire.messages import AlarmRecord, FrameMeta, GateEventRecord, Heartbeat, InspectionResult, RejectCommand

# 0.4 s from camera to gate; a verdict must arrive 20 ms before the fire time.
FAST = LineTimingSettings(conveyor_speed_mm_s=1000.0, camera_to_gate_mm=400.0, gate_window_mm=100.0, verdict_margin_ms=20.0)


class FakeMessage:
    _offsets: dict[str, int] = {}

    def __init__(self, topic: str, value: bytes | None, key: bytes | None = None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        self._topic, self._value, self._key, self._headers = topic, value, key, headers
        self._offset = FakeMessage._offsets.get(topic, 0)
        FakeMessage._offsets[topic] = self._offset + 1
        self._ts = time.time_ns() // 1_000_000

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self._lock = threading.Lock()

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers: Any = None,
                **_: Any) -> None:
        with self._lock:
            self.sent.append((topic, key, value, headers))

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        return 0

    def on(self, topic: str) -> list[tuple[str, bytes | None, bytes | None, Any]]:
        with self._lock:
            return [s for s in self.sent if s[0] == topic]


def settings(**watchdog: Any) -> Settings:
    base = Settings()
    wd = WatchdogSettings(**({"enabled": False} | watchdog))
    return base.model_copy(update={
        "lines": {"line-1": FAST},
        "plc": base.plc.model_copy(update={"enabled": False}),
        "watchdog": wd,
    })


def frame(s: Settings, unit: str, capture: int | None = None, line: str = "line-1", lot: str = "LOT-A") -> FakeMessage:
    meta = FrameMeta(unit, line, "cam-1", "tablet-round-white-10mm", capture or now_ns(), "image/png", lot)
    return FakeMessage(s.kafka.topic_captures, b"", line.encode(), meta.to_headers())


def result(s: Settings, unit: str, verdict: str, capture: int, cause: str = "model", line: str = "line-1") -> FakeMessage:
    r = InspectionResult(
        unit_id=unit, line=line, camera="cam-1", product="p", lot="LOT-A", verdict=verdict, cause=cause,  # type: ignore[arg-type]
        inspected=cause == "model", defect="none", score=0.1, threshold=0.5, model_name="m", model_version="1",
        capture_ns=capture, received_ns=capture, inferred_ns=now_ns(), worker="w",
    )
    return FakeMessage(s.kafka.topic_results, r.to_json(), unit.encode())


def reject(s: Settings, unit: str, capture: int, line: str = "line-1") -> FakeMessage:
    c = RejectCommand(unit, line, "cam-1", "LOT-A", "model", "chip", capture, now_ns())
    return FakeMessage(s.kafka.topic_rejects, c.to_json(), line.encode())


def gate_events(producer: FakeProducer, s: Settings) -> dict[str, GateEventRecord]:
    return {r.unit_id: r for r in (GateEventRecord.from_json(v) for _, _, v, _ in producer.on(s.kafka.topic_gate_events))}


def alarms(producer: FakeProducer, s: Settings) -> list[AlarmRecord]:
    return [AlarmRecord.from_json(v) for _, _, v, _ in producer.on(s.kafka.topic_alarms)]


until = partial(eventually, timeout_s=5.0, poll_s=0.01)


@pytest.fixture
def make() -> Any:
    started: list[Actuator] = []

    def build(s: Settings, gate: SimulatedGate | None = None) -> tuple[Actuator, FakeProducer]:
        producer = FakeProducer()
        actuator = Actuator(s, producer, gate)  # type: ignore[arg-type]
        actuator.start()
        started.append(actuator)
        return actuator, producer

    yield build
    for a in started:
        a.stop()


def test_every_captured_unit_is_rejected_unless_its_pass_verdict_is_in_time(make: Any) -> None:
    s = settings()
    gate = SimulatedGate()
    actuator, producer = make(s, gate)
    t = now_ns()
    units = ["pass", "reject", "silent", "review", "late-pass"]
    actuator.handle([frame(s, f"u-{u}", t) for u in units])
    actuator.handle([
        result(s, "u-pass", "pass", t),
        result(s, "u-reject", "reject", t), reject(s, "u-reject", t), reject(s, "u-reject", t),  # duplicates
        result(s, "u-review", "review", t),
    ])
    time.sleep(max(0.0, (t + 400_000_000 - now_ns()) / 1e9) + 0.05)  # past the cutoff: the pass is late
    actuator.handle([result(s, "u-late-pass", "pass", t)])
    events = until(lambda: (e := gate_events(producer, s)) and len(e) == 5 and e, what="five gate events")
    got = {u: (e.outcome, e.cause) for u, e in events.items()}
    assert got == {
        "u-pass": ("passed", "model"),
        "u-reject": ("fired", "model"),
        "u-silent": ("fired", "late"),
        "u-review": ("fired", "model"),
        "u-late-pass": ("fired", "late"),
    }
    assert sorted(gate.fired) == ["u-late-pass", "u-reject", "u-review", "u-silent"]  # each once
    # Fired at the unit's gate time, not when the verdict arrived.
    for e in events.values():
        assert e.window_start_ns <= e.acted_ns <= e.window_end_ns, e
        assert e.admitted and e.lot == "LOT-A" and e.capture_ns == t
    assert events["u-pass"].verdict == "pass" and events["u-silent"].verdict == ""
    assert events["u-pass"].verdict_ns is not None and events["u-pass"].verdict_ns < events["u-pass"].cutoff_ns
    fired = {json.loads(v)["unit_id"]: json.loads(v)["cause"] for _, _, v, _ in producer.on(s.kafka.topic_actuations)}
    assert fired == {"u-reject": "model", "u-review": "model", "u-silent": "late", "u-late-pass": "late"}
    assert actuator.counters["verdict_late"] == 1 and actuator.counters["verdict_duplicate"] >= 2
    assert alarms(producer, s) == []


def test_watchdog_rejects_everything_while_a_component_is_silent(make: Any) -> None:
    # The 0.4 s line leaves 0.31 s of fail-safe budget with these (simulated gate: no PLC write).
    s = settings(enabled=True, timeouts_s={"worker": 0.3, "triton": 0.3}, clear_after_s=0.1, check_interval_s=0.02,
                 heartbeat_interval_s=0.05, plc_fail_safe_latency_s=0.0, fail_safe_margin_s=0.02)
    actuator, producer = make(s)
    actuator.arm()
    triton_ok = threading.Event()
    triton_ok.set()
    done = threading.Event()
    lock = threading.Lock()  # the consumer loop is one thread: handle() is never concurrent

    def handle(messages: list[FakeMessage]) -> None:
        with lock:
            actuator.handle(messages)

    def beater() -> None:  # a worker beating every 50 ms, reporting its Triton probe
        while not done.wait(0.05):
            handle([FakeMessage(s.kafka.topic_heartbeats, Heartbeat("w1", "worker", now_ns(), triton_ok.is_set()).to_json())])

    thread = threading.Thread(target=beater, daemon=True)
    thread.start()
    try:
        t = now_ns()
        handle([frame(s, "healthy", t), result(s, "healthy", "pass", t)])
        until(lambda: "healthy" in gate_events(producer, s), what="healthy unit at the gate")
        assert gate_events(producer, s)["healthy"].outcome == "passed"

        # Triton stops answering (the worker still beats, reporting it): alarm, reject-all.
        triton_ok.clear()
        until(lambda: "pipeline_unhealthy" in actuator.active_alarms(), what="alarm raised")
        assert "triton" in actuator.active_alarms()["pipeline_unhealthy"]
        t = now_ns()
        handle([frame(s, "blind", t), result(s, "blind", "pass", t)])
        until(lambda: "blind" in gate_events(producer, s), what="unit during the outage")
        blind = gate_events(producer, s)["blind"]
        assert (blind.outcome, blind.cause, blind.verdict) == ("fired", "failsafe", "pass")

        # Healthy again: cleared after clear_after_s; the clear carries the raise's id and time.
        triton_ok.set()
        until(lambda: not actuator.active_alarms(), what="alarm cleared")
        raised, cleared = alarms(producer, s)
        assert raised.active and not cleared.active and raised.alarm_id == cleared.alarm_id
        assert cleared.raised_ns == raised.raised_ns < (cleared.cleared_ns or 0)
        t = now_ns()
        handle([frame(s, "after", t), result(s, "after", "pass", t)])
        until(lambda: "after" in gate_events(producer, s), what="unit after recovery")
        assert gate_events(producer, s)["after"].outcome == "passed"
    finally:
        done.set()
        thread.join(2)


def test_bad_input_is_logged_alarmed_and_never_stops_the_actuator(make: Any) -> None:
    s = settings()
    gate = SimulatedGate()
    actuator, producer = make(s, gate)
    t = now_ns()
    actuator.handle([
        FakeMessage(s.kafka.topic_rejects, b"{not json", b"line-1"),
        FakeMessage(s.kafka.topic_results, b'{"unit_id": "x"}', b"x"),
        reject(s, "on-line-9", t, line="line-9"),  # unknown line
        # What another producer could send (LineSight's own refuses to publish it: to_json raises).
        FakeMessage(s.kafka.topic_rejects, json.dumps(
            json.loads(RejectCommand("u", "line-1", "c", "L", "model", "d", t, t).to_json()) | {"unit_id": ""}).encode()),
        reject(s, "ghost", t),  # a unit the camera never captured: rejected anyway, alarmed
        # A capture with only its unit id: admitted on its key's line (the gateway keys by line).
        FakeMessage(s.kafka.topic_captures, b"", b"line-1", [("ls-unit-id", b"nometa")]),
        FakeMessage(s.kafka.topic_captures, b"", None, []),  # no identity at all
        FakeMessage(s.kafka.topic_heartbeats, b"garbage"),
        frame(s, "bad-line", t, line="line-9"),
    ])
    assert len(producer.on(s.kafka.topic_deadletter)) == 4
    reasons = [dict(h)["ls-dlq-reason"].decode() for _, _, _, h in producer.on(s.kafka.topic_deadletter)]
    assert any("not JSON" in r for r in reasons) and any("unknown line 'line-9'" in r for r in reasons)
    assert any("without a unit id" in r for r in reasons)
    events = until(lambda: (e := gate_events(producer, s)) and {"ghost", "nometa"} <= set(e) and e, what="gate events")
    assert (events["ghost"].outcome, events["ghost"].admitted) == ("fired", False)
    assert (events["nometa"].outcome, events["nometa"].cause, events["nometa"].line) == ("fired", "late", "line-1")
    until(lambda: "unknown_unit" in actuator.active_alarms(), what="unknown unit alarm")
    codes = {a.code for a in alarms(producer, s) if a.active}
    assert codes == {"bad_command", "unknown_unit", "untimed_unit"}
    assert actuator.counters["bad_heartbeats"] == 1
    # Still working.
    t = now_ns()
    actuator.handle([frame(s, "fine", t), result(s, "fine", "pass", t)])
    until(lambda: "fine" in gate_events(producer, s), what="a normal unit afterwards")
    assert gate_events(producer, s)["fine"].outcome == "passed"


def _unreachable_plc(mode: GateMode) -> Settings:
    base = settings()
    return base.model_copy(update={"plc": base.plc.model_copy(update={
        "enabled": True, "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/linesight/plc", "gate_mode": mode,
        "connect_timeout_s": 0.3, "reconnect_initial_s": 0.1, "reconnect_max_s": 0.2,
    })})


def test_unreachable_plc_is_an_alarm_and_its_units_are_reported_not_rejected(make: Any) -> None:
    s = _unreachable_plc(GateMode.REJECT)
    actuator, producer = make(s)
    until(lambda: "plc_unreachable" in actuator.active_alarms(), what="plc_unreachable alarm")
    t = now_ns()
    actuator.handle([frame(s, "stuck", t), reject(s, "stuck", t)])
    until(lambda: "stuck" in gate_events(producer, s), what="gate event")
    e = gate_events(producer, s)["stuck"]
    assert e.outcome == "fire_failed" and "PlcUnreachable" in e.reason
    until(lambda: "unit_not_rejected" in actuator.active_alarms(), what="unit_not_rejected alarm")
    assert "quarantine lot LOT-A" in actuator.active_alarms()["unit_not_rejected"]
    assert producer.on(s.kafka.topic_actuations) == []


def test_unreachable_positive_release_plc_rejects_every_unit_by_default(make: Any) -> None:
    """With positive release an unreachable PLC cannot release: the pass unit is recorded as
    rejected by default (fail-safe, with the release's failure), the reject needs no command."""
    s = _unreachable_plc(GateMode.RELEASE)
    actuator, producer = make(s)
    until(lambda: "plc_unreachable" in actuator.active_alarms(), what="plc_unreachable alarm")
    t = now_ns()
    actuator.handle([frame(s, "bad", t), reject(s, "bad", t), frame(s, "good", t), result(s, "good", "pass", t)])
    until(lambda: {"bad", "good"} <= set(gate_events(producer, s)), what="gate events")
    events = gate_events(producer, s)
    assert (events["bad"].outcome, events["bad"].cause) == ("fired", "model")
    assert (events["good"].outcome, events["good"].cause) == ("fired", "failsafe")
    assert "release failed" in events["good"].reason and "PlcUnreachable" in events["good"].reason
    assert "unit_not_rejected" not in actuator.active_alarms()


def test_encoder_timed_line_holds_a_verdict_until_its_frame_and_alarms_an_unknown_unit(make: Any) -> None:
    base = settings(bad_input_hold_s=0.3)
    enc = LineTimingSettings(conveyor_speed_mm_s=1000.0, camera_to_gate_mm=400.0, counts_per_mm=2.0,
                             gate_window_mm=100.0, verdict_margin_ms=20.0)
    s = base.model_copy(update={"lines": {"line-e": enc}})
    actuator, producer = make(s)
    t = now_ns()
    meta = FrameMeta("e1", "line-e", "cam-1", "p", t, "image/png", "LOT-E", encoder_count=10_000)
    assert FrameMeta.from_headers(meta.to_headers()).encoder_count == 10_000
    # The pass verdict arrives before the frame: held, then applied when the frame is admitted.
    actuator.handle([result(s, "e1", "pass", t, line="line-e")])
    assert actuator.counters["verdicts_parked"] == 1
    actuator.handle([FakeMessage(s.kafka.topic_captures, b"", b"line-e", meta.to_headers())])
    events = until(lambda: (e := gate_events(producer, s)) and "e1" in e and e, what="e1 at the gate")
    assert (events["e1"].outcome, events["e1"].admitted) == ("passed", True)
    # Gate time from the count: 400 mm * 2 counts/mm = 800 counts after capture at the default rate.
    assert abs(events["e1"].deadline_ns - (t + 400_000_000)) < 5_000_000
    # A verdict whose frame never comes: alarmed as an unknown unit after the hold.
    actuator.handle([result(s, "ghost", "reject", t, line="line-e")])
    until(lambda: (actuator.handle([]), "unknown_unit" in actuator.active_alarms())[1], what="unknown unit alarm")
    assert "frame never arrived" in actuator.active_alarms()["unknown_unit"]


class BrokerSide:
    """What a `RenewingProducer` wraps: acknowledges what it was given on poll/flush while
    ``acks``; with ``acks`` off it stands for a producer whose id the broker forgot (no answer)."""

    def __init__(self, error_cb: Any, **_: Any) -> None:
        self.error_cb = error_cb
        self.acks = True
        self.purged = False
        self.sent: list[tuple[str, bytes | None, Any]] = []
        self._served = 0
        self._lock = threading.Lock()

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers: Any = None,
                on_delivery: Any = None) -> None:
        with self._lock:
            self.sent.append((topic, value, on_delivery))

    def poll(self, _timeout: float = 0) -> int:
        with self._lock:
            due = self.sent[self._served:] if self.acks else []
            self._served += len(due)
        for _, _, report in due:
            report(None, None)
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        if not self.acks:
            time.sleep(timeout)
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True) -> None:
        self.purged = True

    def on(self, topic: str) -> list[bytes | None]:
        with self._lock:
            return [v for t, v, _ in self.sent if t == topic]


def test_gate_events_the_broker_never_acknowledged_are_resent_by_a_renewed_producer_before_the_commit() -> None:
    """A broker restart that forgets the actuator's producer id: the gate events produced meanwhile
    are re-sent, in order, by the next producer, and the consumer loop's flush (before its commit)
    returns only when they are acknowledged."""
    s = settings()
    made: list[BrokerSide] = []

    def factory(_kafka: Any, _client_id: str, **conf: Any) -> BrokerSide:
        made.append(BrokerSide(**conf))
        return made[-1]

    producer = RenewingProducer(s.kafka, "linesight-actuator", stall_s=1.0, factory=factory)  # type: ignore[arg-type]
    actuator = Actuator(s, producer, SimulatedGate())
    actuator.start()
    try:
        t = now_ns()
        actuator.handle([frame(s, "u-pass", t), frame(s, "u-silent", t), result(s, "u-pass", "pass", t)])
        first = made[0]
        first.acks = False  # the broker restarted without its state ...
        first.error_cb(KafkaError(KafkaError._TRANSPORT, "connection lost"))  # ... after a lost connection
        until(lambda: len(first.on(s.kafka.topic_gate_events)) == 2, what="gate events on the old producer")
        assert len(made) == 1 and len(producer) >= 3  # two gate events and an actuation, unacknowledged
        actuator.handle([])  # what the consumer loop runs before committing
        assert len(producer) == 0 and producer.renewals == 1 and first.purged
        second = made[1]
        resent = [GateEventRecord.from_json(v) for v in second.on(s.kafka.topic_gate_events)]
        assert {(e.unit_id, e.outcome) for e in resent} == {("u-pass", "passed"), ("u-silent", "fired")}
        assert [json.loads(v or b"")["unit_id"] for v in second.on(s.kafka.topic_actuations)] == ["u-silent"]
        order = [(topic, json.loads(v or b"").get("unit_id")) for topic, v, _ in second.sent if topic != s.kafka.topic_heartbeats]
        assert order.index((s.kafka.topic_gate_events, "u-silent")) < order.index((s.kafka.topic_actuations, "u-silent"))
    finally:
        actuator.stop()
