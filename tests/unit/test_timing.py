"""Timing model, reject scheduler and watchdog, on a manual clock (no real waiting).

The scheduler must fire each reject when its unit is at the gate whatever the verdict latency,
once per unit, reject units without a verdict in time as `late`, refuse bad commands with a
reason without ever raising, and go reject-all while the watchdog says the pipeline is blind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import pytest
from support import eventually_async

from pipeline.actuation.alarms import AlarmEvent
from pipeline.actuation.clock import ManualClock, SystemClock
from pipeline.actuation.gate import FireResult, GateError, SimulatedGate
from pipeline.actuation.scheduler import DecisionKind, FireCause, GateEvent, Outcome, RejectScheduler
from pipeline.actuation.timing_model import EncoderTracker, GateTiming, LineTimingModel, UnitRef
from pipeline.actuation.watchdog import Watchdog
from pipeline.core.times import NS_PER_MS, NS_PER_S
from pipeline.settings.actuation import LineTimingSettings

SPEED = LineTimingSettings(conveyor_speed_mm_s=250.0, camera_to_gate_mm=500.0, gate_window_mm=10.0, verdict_margin_ms=20.0)


eventually = partial(eventually_async, timeout_s=5.0, what="condition", poll_s=0.005)


@dataclass
class Rig:
    clock: ManualClock
    scheduler: RejectScheduler
    events: list[GateEvent] = field(default_factory=list)
    fired_at: list[tuple[str, str, int]] = field(default_factory=list)  # (unit, cause, clock time)

    def fired_units(self) -> list[str]:
        return [u for u, _, _ in self.fired_at]

    def by_unit(self) -> dict[str, GateEvent]:
        return {e.unit_id: e for e in self.events}


class RigGate(SimulatedGate):
    """The simulated gate, noting each fire's cause and clock time; it can jam or raise."""

    def __init__(self, clock: ManualClock, fired_at: list[tuple[str, str, int]], fail: bool, raise_: bool) -> None:
        super().__init__(clock)
        self.clock, self.fired_at, self.fail, self.raise_ = clock, fired_at, fail, raise_

    async def fire_unit(self, unit: UnitRef, cause: str) -> FireResult:
        self.fired_at.append((unit.unit_id, cause, self.clock.now_ns()))
        if self.raise_:
            raise RuntimeError("driver bug")
        if self.fail:
            return FireResult(False, unit.unit_id, error=GateError("jammed"))
        return await super().fire_unit(unit, cause)


def make_rig(lines: dict[str, LineTimingSettings] | None = None, fail: bool = False, raise_: bool = False) -> Rig:
    clock = ManualClock()
    fired_at: list[tuple[str, str, int]] = []
    events: list[GateEvent] = []
    gate = RigGate(clock, fired_at, fail, raise_)
    scheduler = RejectScheduler(lines or {"line-1": SPEED}, gate, clock=clock, on_event=events.append)
    return Rig(clock, scheduler, events, fired_at)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = make_rig()
    r.scheduler.start()
    yield r
    await r.scheduler.stop()


def unit(n: int, t_ns: int, line: str = "line-1", count: int | None = None) -> UnitRef:
    return UnitRef(line, f"u{n}", t_ns, count, lot="LOT-1")


def cmd(u: UnitRef, action: str = "reject", cause: str = "model") -> dict[str, object]:
    return {"unit_id": u.unit_id, "line": u.line, "capture_ns": u.capture_ns, "encoder_count": u.encoder_count,
            "lot": u.lot, "action": action, "cause": cause}


# ---------------------------------------------------------------------------------- model


def test_speed_model_deadline_window_and_cutoff() -> None:
    s = SPEED.model_copy(update={"actuation_lead_ms": 5.0})
    t = LineTimingModel("line-1", s).timing(UnitRef("line-1", "u", 10 * NS_PER_S))
    assert t.deadline_ns == 12 * NS_PER_S  # 500 mm at 250 mm/s
    assert t.fire_at_ns == t.deadline_ns - 5 * NS_PER_MS
    assert (t.window_start_ns, t.window_end_ns) == (t.deadline_ns - 20 * NS_PER_MS, t.deadline_ns + 20 * NS_PER_MS)
    assert t.verdict_cutoff_ns == t.fire_at_ns - 20 * NS_PER_MS


def test_encoder_tracker_rate_and_extrapolation() -> None:
    tr = EncoderTracker(window_ns=NS_PER_S, fallback_counts_per_s=100.0)
    tr.observe(1000, 0)
    assert tr.counts_per_s() == 100.0  # one sample: nominal rate
    tr.observe(1400, NS_PER_S // 2)  # 800 counts/s
    assert tr.counts_per_s() == pytest.approx(800.0)
    assert tr.time_of(2200) == NS_PER_S // 2 + NS_PER_S
    tr.observe(1300, NS_PER_S // 4)  # out of order: ignored
    assert tr.counts_per_s() == pytest.approx(800.0)


def test_encoder_model_uses_gate_offset_in_counts() -> None:
    s = LineTimingSettings(counts_per_mm=4.0, camera_to_gate_mm=500.0, gate_window_mm=10.0, conveyor_speed_mm_s=250.0)
    m = LineTimingModel("line-e", s)
    m.observe_encoder(0, 0)
    m.observe_encoder(1000, NS_PER_S)  # 1000 counts/s = 250 mm/s
    t = m.timing(UnitRef("line-e", "u", NS_PER_S, encoder_count=1000))
    assert t.deadline_ns == 3 * NS_PER_S  # 2000 counts of camera-to-gate at 1000 counts/s
    assert t.window_end_ns - t.deadline_ns == 20 * NS_PER_MS


# ------------------------------------------------------------------------------ scheduler


async def test_reject_fires_at_the_gate_whatever_the_verdict_latency(rig: Rig) -> None:
    t0 = rig.clock.now_ns()
    units = [unit(i, t0) for i in range(4)]
    timings: dict[str, GateTiming] = {}
    for i, u in enumerate(units):
        # verdicts arrive 0, 0.5, 1.0, 1.9 s after capture (cutoff is 1.98 s)
        await rig.clock.advance_to(t0 + [0, 500, 1000, 1900][i] * NS_PER_MS)
        d = rig.scheduler.submit(cmd(u))
        assert d.kind is DecisionKind.SCHEDULED, d
        assert d.timing is not None
        timings[u.unit_id] = d.timing
    await rig.clock.advance_to(t0 + 3 * NS_PER_S)
    await eventually(lambda: len(rig.events) == 4)
    for unit_id, cause, at in rig.fired_at:
        assert cause == "model"
        assert at == timings[unit_id].fire_at_ns == t0 + 2 * NS_PER_S  # exactly at the gate
    assert all(e.outcome is Outcome.FIRED and e.in_window for e in rig.events)
    margins = sorted(e.margin_ns for e in rig.events if e.margin_ns is not None)
    assert margins[0] == 100 * NS_PER_MS


async def test_duplicate_commands_fire_once(rig: Rig) -> None:
    t0 = rig.clock.now_ns()
    u = unit(1, t0)
    assert rig.scheduler.admit(u).kind is DecisionKind.ACCEPTED
    assert rig.scheduler.admit(u).kind is DecisionKind.DUPLICATE
    assert rig.scheduler.submit(cmd(u)).kind is DecisionKind.SCHEDULED
    assert rig.scheduler.submit(cmd(u)).kind is DecisionKind.DUPLICATE
    assert rig.scheduler.submit(cmd(u, cause="failsafe")).kind is DecisionKind.DUPLICATE
    await rig.clock.advance(3 * NS_PER_S)
    await eventually(lambda: len(rig.events) == 1)
    assert rig.scheduler.submit(cmd(u)).kind is DecisionKind.DUPLICATE  # after firing too
    await rig.clock.advance(NS_PER_S)
    assert rig.fired_units() == ["u1"]


async def test_unit_without_verdict_in_time_is_rejected_as_late(rig: Rig) -> None:
    t0 = rig.clock.now_ns()
    admitted, passed = unit(1, t0), unit(2, t0)
    rig.scheduler.admit(admitted)
    rig.scheduler.admit(passed)
    assert rig.scheduler.submit(cmd(passed, "pass")).kind is DecisionKind.ACCEPTED
    # verdict after the cutoff (1.98 s) but before the fire time: too late to trust
    await rig.clock.advance_to(t0 + 1990 * NS_PER_MS)
    late = rig.scheduler.submit(cmd(admitted, "pass"))
    assert late.kind is DecisionKind.LATE and "cutoff" in late.reason
    # a late verdict for a unit nobody admitted: still fired (as late) while its window is open
    stray = unit(3, t0)
    assert rig.scheduler.submit(cmd(stray, "pass")).kind is DecisionKind.LATE
    await rig.clock.advance_to(t0 + 3 * NS_PER_S)
    await eventually(lambda: len(rig.events) == 3)
    ev = rig.by_unit()
    assert (ev["u1"].outcome, ev["u1"].cause, ev["u1"].verdict_ns) == (Outcome.FIRED, FireCause.LATE, None)
    assert (ev["u2"].outcome, ev["u2"].cause) == (Outcome.PASSED, "model")
    assert (ev["u3"].outcome, ev["u3"].cause) == (Outcome.FIRED, FireCause.LATE)
    assert rig.fired_at[0][2] == ev["u1"].timing.fire_at_ns  # still on time at the gate
    again = rig.scheduler.submit(cmd(admitted))
    assert again.kind is DecisionKind.LATE  # after the fact: reported late, not fired twice
    assert sorted(rig.fired_units()) == ["u1", "u3"]


async def test_pass_then_reject_upgrades_but_reject_then_pass_stays_rejected(rig: Rig) -> None:
    t0 = rig.clock.now_ns()
    a, b = unit(1, t0), unit(2, t0)
    rig.scheduler.submit(cmd(a, "pass"))
    assert rig.scheduler.submit(cmd(a, "reject")).kind is DecisionKind.SCHEDULED
    rig.scheduler.submit(cmd(b, "reject"))
    assert rig.scheduler.submit(cmd(b, "pass")).kind is DecisionKind.DUPLICATE
    await rig.clock.advance(3 * NS_PER_S)
    await eventually(lambda: len(rig.events) == 2)
    assert sorted(rig.fired_units()) == ["u1", "u2"]


async def test_fail_safe_rejects_everything_at_the_gate(rig: Rig) -> None:
    t0 = rig.clock.now_ns()
    a, b = unit(1, t0), unit(2, t0 + NS_PER_S)
    rig.scheduler.submit(cmd(a, "pass"))
    rig.scheduler.submit(cmd(b, "pass"))
    rig.scheduler.set_fail_safe(True, "worker silent")
    await rig.clock.advance_to(t0 + 2500 * NS_PER_MS)
    await eventually(lambda: len(rig.events) == 1)
    rig.scheduler.set_fail_safe(False)
    await rig.clock.advance_to(t0 + 4 * NS_PER_S)
    await eventually(lambda: len(rig.events) == 2)
    ev = rig.by_unit()
    assert (ev["u1"].outcome, ev["u1"].cause) == (Outcome.FIRED, FireCause.FAILSAFE)
    assert ev["u2"].outcome is Outcome.PASSED


@pytest.mark.parametrize(
    "raw, reason",
    [
        ({"unit_id": "u", "line": "line-9", "capture_ns": 5}, "unknown line"),
        ({"line": "line-1", "capture_ns": 5}, "unit id"),
        ({"unit_id": "u", "line": "line-1", "capture_ns": "soon"}, "capture_ns"),
        ({"unit_id": "u", "line": "line-1", "capture_ns": 5, "action": "explode"}, "action"),
        ({"unit_id": "u", "line": "line-1", "capture_ns": 5, "cause": "whim"}, "cause"),
        ({"unit_id": "u", "line": "line-1", "capture_ns": 5, "encoder_count": 1.5}, "encoder_count"),
        ({"unit_id": "u", "line": "line-1", "capture_ns": 10**30}, "future"),
        ({"unit_id": "u", "line": "line-e", "capture_ns": 5}, "encoder"),
        (None, "malformed"),
        (42, "malformed"),
        (b"\xff{not json", "malformed"),
    ],
)
async def test_bad_commands_are_refused_with_a_reason(raw: object, reason: str) -> None:
    refusals: list[object] = []
    r = make_rig({"line-1": SPEED, "line-e": LineTimingSettings(counts_per_mm=4.0)})
    r.scheduler._on_refusal = refusals.append
    r.scheduler.start()
    try:
        d = r.scheduler.submit(raw)
        assert d.kind is DecisionKind.REFUSED and reason in d.reason, d
        assert refusals == [d]
        # the loop is alive: a good command still fires
        u = unit(1, r.clock.now_ns())
        assert r.scheduler.submit(cmd(u)).kind is DecisionKind.SCHEDULED
        await r.clock.advance(3 * NS_PER_S)
        await eventually(lambda: r.fired_units() == ["u1"])
    finally:
        await r.scheduler.stop()


@pytest.mark.parametrize("mode", ["fail", "raise"])
async def test_gate_failure_is_an_event_not_a_crash(mode: str) -> None:
    r = make_rig(fail=mode == "fail", raise_=mode == "raise")
    r.scheduler.start()
    try:
        t0 = r.clock.now_ns()
        r.scheduler.submit(cmd(unit(1, t0)))
        r.scheduler.submit(cmd(unit(2, t0 + NS_PER_MS)))
        await r.clock.advance(3 * NS_PER_S)
        await eventually(lambda: len(r.events) == 2)
        assert all(e.outcome is Outcome.FIRE_FAILED and e.reason for e in r.events)
    finally:
        await r.scheduler.stop()


async def test_reject_that_cannot_fire_inside_the_window_is_reported_missed() -> None:
    r = make_rig()
    t0 = r.clock.now_ns()
    r.scheduler.submit(cmd(unit(1, t0)))
    await r.clock.advance(3 * NS_PER_S)  # scheduler not running: a stalled actuator
    r.scheduler.start()
    try:
        await eventually(lambda: len(r.events) == 1)
        assert r.events[0].outcome is Outcome.MISSED and "window closed" in r.events[0].reason
        assert r.fired_at == []  # firing now would push the wrong unit
    finally:
        await r.scheduler.stop()


async def test_positive_release_releases_only_pass_verdicts_at_the_gate() -> None:
    """Positive release: a pass verdict in time is released at the fire time; a reject, a unit
    without a verdict and every unit under fail-safe are not released (rejected by default)."""
    clock = ManualClock()
    gate = SimulatedGate(clock, positive_release=True)
    events: list[GateEvent] = []
    sched = RejectScheduler({"line-1": SPEED}, gate, clock=clock, on_event=events.append)
    sched.start()
    try:
        t0 = clock.now_ns()
        good, bad, silent = unit(1, t0), unit(2, t0), unit(3, t0)
        for u in (good, bad, silent):
            sched.admit(u)
        sched.submit(cmd(good, "pass"))
        sched.submit(cmd(bad, "reject"))
        await clock.advance_to(t0 + 3 * NS_PER_S)
        await eventually(lambda: len(events) == 3)
        by = {e.unit_id: e for e in events}
        assert gate.released == ["u1"] and sorted(gate.fired) == ["u2", "u3"]
        assert by["u1"].outcome is Outcome.PASSED and by["u1"].fired_ns == t0 + 2 * NS_PER_S
        assert (by["u3"].outcome, by["u3"].cause) == (Outcome.FIRED, FireCause.LATE)
        # Fail-safe: a pass verdict is not released.
        t1 = clock.now_ns()
        later = unit(4, t1)
        sched.admit(later)
        sched.submit(cmd(later, "pass"))
        sched.set_fail_safe(True, "worker silent")
        await clock.advance_to(t1 + 3 * NS_PER_S)
        await eventually(lambda: len(events) == 4)
        assert gate.released == ["u1"] and events[-1].cause == FireCause.FAILSAFE
    finally:
        await sched.stop()


async def test_positive_release_never_releases_after_the_window() -> None:
    """A stalled actuator must not release late (it would let the next unit through): the unit
    is recorded as rejected by default."""
    clock = ManualClock()
    gate = SimulatedGate(clock, positive_release=True)
    events: list[GateEvent] = []
    sched = RejectScheduler({"line-1": SPEED}, gate, clock=clock, on_event=events.append)
    t0 = clock.now_ns()
    sched.admit(unit(1, t0))
    sched.submit(cmd(unit(1, t0), "pass"))
    await clock.advance(3 * NS_PER_S)  # scheduler not running
    sched.start()
    try:
        await eventually(lambda: len(events) == 1)
        assert (events[0].outcome, events[0].cause) == (Outcome.FIRED, FireCause.FAILSAFE)
        assert "not released" in events[0].reason and gate.released == []
    finally:
        await sched.stop()


async def test_encoder_line_retimes_pending_units_when_the_belt_speeds_up() -> None:
    enc = LineTimingSettings(counts_per_mm=4.0, camera_to_gate_mm=500.0, conveyor_speed_mm_s=250.0,
                             gate_window_mm=10.0, verdict_margin_ms=0.0, encoder_rate_window_s=0.5)
    r = make_rig({"line-e": enc})
    r.scheduler.start()
    try:
        t0 = r.clock.now_ns()
        r.scheduler.observe_encoder("line-e", 0, t0 - NS_PER_S)
        u = unit(1, t0, line="line-e", count=1000)  # belt at 1000 counts/s; gate 2000 counts on
        d = r.scheduler.submit(cmd(u))
        assert d.timing is not None and d.timing.fire_at_ns == t0 + 2 * NS_PER_S
        # half a second later the belt runs at 2000 counts/s: the unit is at the gate sooner
        await r.clock.advance_to(t0 + NS_PER_S // 2)
        r.scheduler.observe_encoder("line-e", 2000, t0 + NS_PER_S // 2)
        await r.clock.advance_to(t0 + 3 * NS_PER_S)
        await eventually(lambda: len(r.events) == 1)
        fired = r.fired_at[0][2]
        # remaining 1000 counts at 2000 counts/s -> 0.5 s later, not 1.5 s later
        assert fired == t0 + NS_PER_S
        assert r.events[0].in_window
    finally:
        await r.scheduler.stop()


async def test_real_clock_fires_within_a_few_ms_of_the_deadline() -> None:
    fast = LineTimingSettings(conveyor_speed_mm_s=1000.0, camera_to_gate_mm=100.0, gate_window_mm=100.0, verdict_margin_ms=5.0)
    events: list[GateEvent] = []
    clock = SystemClock()

    s = RejectScheduler({"line-1": fast}, SimulatedGate(clock), on_event=events.append)
    s.start()
    try:
        for i in range(10):
            u = UnitRef("line-1", f"u{i}", clock.now_ns())
            s.admit(u)
            await asyncio.sleep(0.01 * (i % 4))  # inference latency 0-30 ms, travel 100 ms
            s.submit(cmd(u, "reject" if i % 2 else "pass"))
        await eventually(lambda: len(events) == 10)
    finally:
        await s.stop()
    fired = [e for e in events if e.outcome is Outcome.FIRED]
    assert len(fired) == 5 and all(e.cause == "model" for e in fired)
    # loaded CI machine: generous, but far below the 100 ms travel and inside the ±50 ms window
    assert all(0 <= e.acted_ns - e.timing.fire_at_ns < 40 * NS_PER_MS for e in events)


# ------------------------------------------------------------------------------- watchdog


async def test_watchdog_raises_and_clears_with_hysteresis() -> None:
    clock = ManualClock()
    alarms: list[AlarmEvent] = []
    wd = Watchdog({"worker": 1.0, "triton": 2.0}, clear_after_s=0.5, clock=clock, on_alarm=alarms.append)
    now = clock.now_ns
    assert wd.check() and not wd.fail_safe
    await clock.advance(1500 * NS_PER_MS)
    wd.beat("triton")
    assert not wd.check() and wd.fail_safe  # worker silent 1.5 s > 1 s
    assert alarms[-1].active and "worker" in alarms[-1].reason
    wd.beat("worker")
    assert not wd.check()  # healthy again, but not for long enough
    await clock.advance(400 * NS_PER_MS)
    wd.beat("worker")
    assert not wd.check()
    await clock.advance(200 * NS_PER_MS)
    wd.beat("worker")
    wd.beat("triton")
    assert wd.check() and not wd.fail_safe
    assert [a.active for a in alarms] == [True, False]
    assert alarms[-1].at_ns == now()
    wd.beat("nobody")  # unknown component: ignored, not a crash
    assert wd.stale() == {}


def test_actuation_loop_from_a_plain_thread() -> None:
    """The sync actuator's view: admit/submit/beat from a thread; events and alarms come back."""
    import threading
    import time as _time

    from pipeline.actuation.loop import ActuationLoop
    from pipeline.settings.actuation import PlcSettings

    events: list[GateEvent] = []
    lock = threading.Lock()

    def on_event(e: GateEvent) -> None:
        with lock:
            events.append(e)

    fast = LineTimingSettings(conveyor_speed_mm_s=1000.0, camera_to_gate_mm=100.0, gate_window_mm=100.0, verdict_margin_ms=5.0)
    loop = ActuationLoop(PlcSettings(enabled=False), {"line-1": fast}, watchdog_timeouts_s={"worker": 0.3},
                         watchdog_clear_after_s=0.05, watchdog_interval_s=0.02, on_event=on_event)
    loop.start()
    try:
        now = _time.time_ns()
        a, b = UnitRef("line-1", "a", now), UnitRef("line-1", "b", now)
        assert loop.admit(a).kind is DecisionKind.ACCEPTED
        assert loop.submit(cmd(a)).kind is DecisionKind.SCHEDULED
        assert loop.submit(cmd(b, "pass")).kind is DecisionKind.ACCEPTED
        assert loop.submit({"line": "nope"}).kind is DecisionKind.REFUSED
        deadline = _time.monotonic() + 5
        while len(events) < 2 and _time.monotonic() < deadline:
            loop.beat("worker")
            _time.sleep(0.01)
        assert {(e.unit_id, e.outcome) for e in events} == {("a", Outcome.FIRED), ("b", Outcome.PASSED)}
        # worker stops beating: alarm raised; beats again: cleared
        deadline = _time.monotonic() + 5
        while "pipeline_unhealthy" not in loop.active_alarms() and _time.monotonic() < deadline:
            _time.sleep(0.01)
        assert "pipeline_unhealthy" in loop.active_alarms() and loop.scheduler and loop.scheduler.fail_safe
        deadline = _time.monotonic() + 5
        while loop.active_alarms() and _time.monotonic() < deadline:
            loop.beat("worker")
            _time.sleep(0.01)
        assert not loop.active_alarms()
    finally:
        loop.stop()
