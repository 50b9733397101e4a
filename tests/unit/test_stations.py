"""Multi-station units: the combination logic (`pipeline.actuation.stations`) and the actuator
fed Kafka-shaped station frames and results (no broker). One verdict per unit: pass only when
every declared station passed it, any reject at once, review when the worst is review, a station
missing at the cutoff rejected as late with the station named; frames of other stations are no
second capture, an undeclared station is refused. The real-stack version: tests/e2e/test_stations.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_actuator import FAST, FakeMessage, FakeProducer, alarms, gate_events, settings, until

from pipeline.actuation.gate import SimulatedGate
from pipeline.actuation.service import Actuator
from pipeline.actuation.stations import Combined, FrameKind, StationUnits
from pipeline.core.times import now_ns
from pipeline.settings import Settings
from pipeline.settings.actuation import StationSettings
from pipeline.wire.messages import FrameMeta, InspectionResult, RejectCommand, UnitVerdict

# The side camera sees a unit at the line's trigger point, the top camera 100 mm further on.
STATIONS = [StationSettings(name="side", camera="S-100", offset_mm=0.0),
            StationSettings(name="top", camera="S-200", offset_mm=100.0)]
TWO = FAST.model_copy(update={"stations": STATIONS})
CAMERA = {s.name: s.camera for s in STATIONS}


def station_result(unit: str, station: str, verdict: str, capture: int, defect: str = "none",
                   cause: str = "model") -> InspectionResult:
    return InspectionResult(
        unit_id=unit, line="line-1", camera=CAMERA.get(station, "S-999"), product="p", lot="LOT-A",
        verdict=verdict, cause=cause, inspected=cause == "model", defect=defect,  # type: ignore[arg-type]
        score=0.9 if verdict != "pass" else 0.1, threshold=0.5, model_name="m", model_version="7",
        capture_ns=capture, received_ns=capture, inferred_ns=now_ns(), worker="w", station=station,
    )


# ---- the combination logic


def test_a_unit_passes_only_when_every_declared_station_passed_it() -> None:
    units = StationUnits({"line-1": TWO})
    assert units.result(station_result("u1", "side", "pass", 1)) is None  # waits for top
    assert units.result(station_result("u1", "top", "pass", 2)) == Combined("pass")
    assert units.result(station_result("u1", "top", "pass", 2)) is None  # redelivered: nothing new
    v = units.close("line-1", "u1", released=True, cause="model", decided_ns=3)
    assert (v.verdict, v.missing, v.reason) == ("pass", [], "every station passed")
    assert [(s["station"], s["verdict"], s["model_version"], s["camera"]) for s in v.stations] == [
        ("side", "pass", "7", "S-100"), ("top", "pass", "7", "S-200")]


def test_one_station_reject_rejects_at_once_naming_it() -> None:
    units = StationUnits({"line-1": TWO})
    assert units.result(station_result("u1", "top", "reject", 1, "cap_missing")) == Combined(
        "reject", "top", "cap_missing", "model")
    assert units.result(station_result("u1", "side", "pass", 1)) is None  # already rejected
    v = units.close("line-1", "u1", released=False, cause="model", decided_ns=3)
    assert v.verdict == "reject" and v.missing == [] and "station top reject: cap_missing" in v.reason


def test_review_when_the_worst_is_review_and_every_station_is_in() -> None:
    units = StationUnits({"line-1": TWO})
    assert units.result(station_result("u1", "side", "review", 1, "scratch")) is None  # top still out
    assert units.result(station_result("u1", "top", "pass", 1)) == Combined("review", "side", "scratch", "model")
    assert units.close("line-1", "u1", released=False, cause="model", decided_ns=3).verdict == "review"
    # ... and a later reject of another station still wins over the review.
    assert units.result(station_result("u2", "side", "review", 1)) is None
    assert units.result(station_result("u2", "top", "reject", 1, "crack")).verdict == "reject"  # type: ignore[union-attr]


def test_a_station_missing_at_the_cutoff_is_named_in_the_late_reject() -> None:
    units = StationUnits({"line-1": TWO})
    assert units.result(station_result("u1", "side", "pass", 1)) is None
    v = units.close("line-1", "u1", released=False, cause="late", decided_ns=3)
    assert (v.verdict, v.cause, v.missing) == ("reject", "late", ["top"])
    assert v.reason == "no verdict from station top by the cutoff"
    none = units.close("line-1", "u2", released=False, cause="late", decided_ns=3)
    assert none.missing == ["side", "top"] and "no verdict from stations side, top by the cutoff" in none.reason


def test_station_frames_are_first_other_station_redelivered_second_capture_or_undeclared() -> None:
    units = StationUnits({"line-1": TWO, "line-2": FAST})
    assert not units.declares("line-2") and units.declares("line-1")
    assert units.frame("line-1", "u1", "top", 100) is FrameKind.FIRST
    assert units.frame("line-1", "u1", "side", 90) is FrameKind.OTHER_STATION  # not a second capture
    assert units.frame("line-1", "u1", "top", 100) is FrameKind.REDELIVERED
    assert units.frame("line-1", "u1", "top", 555) is FrameKind.SECOND_CAPTURE
    assert units.frame("line-1", "u1", "bottom", 100) is FrameKind.UNDECLARED
    assert units.frame("line-1", "u2", "", 100) is FrameKind.UNDECLARED


def test_memory_is_bounded() -> None:
    units = StationUnits({"line-1": TWO}, capacity=10)
    for i in range(50):
        units.frame("line-1", f"u{i}", "side", i)
    assert units.frame("line-1", "u0", "side", 0) is FrameKind.FIRST  # forgotten long ago
    assert units.frame("line-1", "u49", "side", 49) is FrameKind.REDELIVERED


# ---- the actuator on a two-station line


@pytest.fixture
def make() -> Iterator[Any]:
    started: list[Actuator] = []

    def build(s: Settings, gate: SimulatedGate) -> tuple[Actuator, FakeProducer]:
        producer = FakeProducer()
        started.append(Actuator(s, producer, gate))  # type: ignore[arg-type]
        started[-1].start()
        return started[-1], producer

    yield build
    for a in started:
        a.stop()


def two_station_settings(**watchdog: Any) -> Settings:
    return settings(**watchdog).model_copy(update={"lines": {"line-1": TWO}})


def station_frame(s: Settings, unit: str, station: str, capture: int) -> FakeMessage:
    meta = FrameMeta(unit, "line-1", CAMERA.get(station, "S-999"), "p", capture, "image/png", "LOT-A", station=station)
    return FakeMessage(s.kafka.topic_captures, b"", meta.line.encode(), meta.to_headers())


def result_msg(s: Settings, r: InspectionResult) -> FakeMessage:
    return FakeMessage(s.kafka.topic_results, r.to_json(), r.unit_id.encode())


def unit_verdicts(producer: FakeProducer, s: Settings) -> dict[str, UnitVerdict]:
    return {v.unit_id: v for v in (UnitVerdict.from_json(b) for _, _, b, _ in producer.on(s.kafka.topic_unit_verdicts))}


def test_actuator_combines_every_station_into_one_verdict_per_unit(make: Any) -> None:
    s = two_station_settings()
    gate = SimulatedGate(positive_release=True)
    actuator, producer = make(s, gate)
    t = now_ns()
    top_t = t + 100_000_000  # the top camera sees the unit 100 mm (0.1 s) later
    units = ["good", "bad-top", "review", "no-top", "failsafe"]
    actuator.handle([station_frame(s, u, "side", t) for u in units] + [
        station_frame(s, u, "top", top_t) for u in units if u != "no-top"])
    actuator.handle([
        result_msg(s, station_result("good", "side", "pass", t)), result_msg(s, station_result("good", "top", "pass", top_t)),
        result_msg(s, station_result("bad-top", "side", "pass", t)),
        result_msg(s, station_result("bad-top", "top", "reject", top_t, "cap_missing")),
        result_msg(s, station_result("review", "side", "review", t, "scratch")),
        result_msg(s, station_result("review", "top", "pass", top_t)),
        result_msg(s, station_result("no-top", "side", "pass", t)),
        result_msg(s, station_result("failsafe", "side", "pass", t)),
        FakeMessage(s.kafka.topic_rejects, RejectCommand(
            "failsafe", "line-1", "S-200", "LOT-A", "failsafe", "uninspected", top_t, now_ns(),
            reason="gateway: incomplete frame from station top").to_json(), b"line-1"),
    ])
    # The bad unit is rejected at once: its reject is at the scheduler before the fire time.
    events = until(lambda: (e := gate_events(producer, s)) and len(e) == len(units) and e, what="every unit at the gate")
    got = {u: (e.outcome, e.cause) for u, e in events.items()}
    assert got == {"good": ("passed", "model"), "bad-top": ("fired", "model"), "review": ("fired", "model"),
                   "no-top": ("fired", "late"), "failsafe": ("fired", "failsafe")}
    assert events["bad-top"].verdict == "reject" and "station top reject: cap_missing" in events["bad-top"].reason
    assert events["no-top"].reason == "no verdict from station top by the cutoff"
    # Timed from the side frame (offset 0): 400 mm at 1 m/s; no second-capture conflict.
    assert all(e.deadline_ns == t + 400_000_000 and e.admitted for e in events.values())
    verdicts = until(lambda: (v := unit_verdicts(producer, s)) and len(v) == len(units) and v, what="unit verdicts")
    assert {u: v.verdict for u, v in verdicts.items()} == {
        "good": "pass", "bad-top": "reject", "review": "review", "no-top": "reject", "failsafe": "reject"}
    assert verdicts["no-top"].missing == ["top"] and verdicts["good"].missing == []
    assert [st["station"] for st in verdicts["good"].stations] == ["side", "top"]
    assert "gateway: incomplete frame from station top" in verdicts["failsafe"].reason
    assert len(producer.on(s.kafka.topic_unit_verdicts)) == len(units)  # one per unit
    assert actuator.counters["admit_conflict"] == 0 and actuator.counters["station_frame_other_station"] == 4
    assert sorted(gate.released) == ["good"]
    assert alarms(producer, s) == []


def test_a_unit_first_seen_by_a_downstream_station_is_timed_from_its_offset(make: Any) -> None:
    s = two_station_settings()
    actuator, producer = make(s, SimulatedGate())
    t = now_ns()
    actuator.handle([station_frame(s, "u1", "top", t)])
    event = until(lambda: gate_events(producer, s).get("u1"), what="u1 at the gate")
    assert event.deadline_ns == t + 300_000_000  # (400 - 100) mm at 1 m/s
    assert unit_verdicts(producer, s)["u1"].missing == ["side", "top"]


def test_same_station_second_capture_conflicts_and_an_undeclared_station_is_refused(make: Any) -> None:
    s = two_station_settings(bad_input_hold_s=30.0)
    actuator, producer = make(s, SimulatedGate())
    t = now_ns()
    actuator.handle([station_frame(s, "u1", "side", t), station_frame(s, "u1", "side", t),  # redelivered
                     station_frame(s, "u1", "top", t + 1), station_frame(s, "u1", "side", t + 5)])  # second capture
    assert actuator.counters["station_frame_redelivered"] == 1 and actuator.counters["admit_conflict"] == 1
    actuator.handle([station_frame(s, "u2", "bottom", t), result_msg(s, station_result("u3", "bottom", "pass", t))])
    dead = producer.on(s.kafka.topic_deadletter)
    assert len(dead) == 2
    reasons = [dict(h)["ls-dlq-reason"].decode() for *_, h in dead]
    assert all("station 'bottom', which line 'line-1' does not declare (stations: side, top)" in r for r in reasons)
    assert "bad_command" in actuator.active_alarms() and "duplicate_unit" in actuator.active_alarms()
    events = until(lambda: (e := gate_events(producer, s)) and len(e) == 2 and e, what="u1 and its second capture")
    assert all(e.outcome == "fired" and e.cause == "failsafe" for e in events.values())
    assert "u2" not in events  # an undeclared station's frame is no unit


def test_a_station_frame_with_broken_metadata_is_still_a_unit_on_the_belt(make: Any) -> None:
    s = two_station_settings()
    actuator, producer = make(s, SimulatedGate())
    # No station header, and an empty product: the metadata does not parse.
    headers = [(k, b"" if k == "ls-product" else v) for k, v in station_frame(s, "u1", "top", now_ns()).headers() or []
               if k != "ls-station"]
    actuator.handle([FakeMessage(s.kafka.topic_captures, b"", b"line-1", headers)])
    assert actuator.counters["admit_bad_metadata"] == 1 and actuator.counters["admit_accepted"] == 1
    event = until(lambda: gate_events(producer, s).get("u1"), what="u1 at the gate")
    assert (event.outcome, event.cause) == ("fired", "late") and producer.on(s.kafka.topic_deadletter) == []
