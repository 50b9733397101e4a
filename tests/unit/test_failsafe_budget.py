"""The watchdog's timeout is bounded by the lines' camera-to-gate time (docs/faults.md).

A unit whose frame never reached the actuator (broker down) is removed only by the PLC's
reject-all, so reject-all must be active before such a unit's fire time. Checked at the limit
on a manual clock: the derived timeout protects the earliest unit, one over it is refused.
"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.actuation.alarms import AlarmEvent
from pipeline.actuation.clock import ManualClock
from pipeline.actuation.watchdog import Watchdog
from pipeline.core.times import NS_PER_MS, NS_PER_S
from pipeline.settings.actuation import WATCHED_COMPONENTS, LineTimingSettings, WatchdogSettings

DEFAULT_LINE = LineTimingSettings()  # 500 mm at 250 mm/s: 2 s camera-to-gate
FAST_LINE = LineTimingSettings(conveyor_speed_mm_s=400.0, camera_to_gate_mm=600.0, actuation_lead_ms=30.0)


def test_the_default_settings_derive_a_timeout_inside_the_budget() -> None:
    wd = WatchdogSettings()
    timeouts = wd.resolved_timeouts_s({"line-1": DEFAULT_LINE})
    assert set(timeouts) == set(WATCHED_COMPONENTS)
    # 2.0 - 0 lead - 0.05 margin - 0.25 heartbeat - 0.1 check - 0.2 PLC write
    assert timeouts["broker"] == pytest.approx(1.4)


def test_the_tightest_line_sets_the_budget() -> None:
    wd = WatchdogSettings()
    budget, line = wd.fail_safe_budget_s({"slow": DEFAULT_LINE, "fast": FAST_LINE})
    assert line == "fast"
    assert budget == pytest.approx(1.5 - 0.03 - 0.05 - 0.25 - 0.1 - 0.2)


def test_a_timeout_over_the_budget_is_refused_with_the_numbers() -> None:
    wd = WatchdogSettings(timeouts_s={"worker": 1.4, "triton": 1.4, "broker": 1.401})
    with pytest.raises(ValueError) as err:
        wd.resolved_timeouts_s({"line-1": DEFAULT_LINE})
    text = str(err.value)
    assert "'broker': 1.401" in text and "camera-to-gate 2.000 s" in text and "= 1.400 s" in text
    assert "worker" not in text.split("exceed")[0]
    # At the limit it is accepted as configured.
    ok = WatchdogSettings(timeouts_s={"worker": 1.4, "triton": 1.0, "broker": 1.4})
    assert ok.resolved_timeouts_s({"line-1": DEFAULT_LINE}) == {"worker": 1.4, "triton": 1.0, "broker": 1.4}


def test_a_line_too_short_for_any_timeout_is_refused() -> None:
    short = LineTimingSettings(conveyor_speed_mm_s=1000.0, camera_to_gate_mm=500.0)  # 0.5 s
    with pytest.raises(ValueError, match="no watchdog timeout can protect the gate"):
        WatchdogSettings().resolved_timeouts_s({"line-1": short})


@pytest.mark.parametrize("check_phase_ms", [0, 1, 37, 99])
async def test_reject_all_is_active_before_the_earliest_unprotected_unit_at_the_limit(check_phase_ms: int) -> None:
    """Beats every heartbeat interval, then the broker dies right after one was sent: every unit
    captured from that beat on is unseen by the actuator. The watchdog (derived timeout, its own
    check loop at any phase) plus the PLC write must make reject-all active before the first such
    unit's fire time, less the margin."""
    settings = WatchdogSettings()
    line = FAST_LINE
    timeouts = settings.resolved_timeouts_s({"line-1": line})
    clock = ManualClock()
    raised: list[AlarmEvent] = []
    wd = Watchdog(timeouts, clear_after_s=settings.clear_after_s, clock=clock,
                  on_alarm=lambda e: raised.append(e) if e.active else None)
    await clock.advance(check_phase_ms * NS_PER_MS)
    task = asyncio.get_running_loop().create_task(wd.run(settings.check_interval_s))
    interval_ns = round(settings.heartbeat_interval_s * NS_PER_S)
    try:
        for _ in range(8):
            for component in WATCHED_COMPONENTS:
                wd.beat(component)
            last_beat_ns = clock.now_ns()
            await clock.advance(interval_ns)
        assert not raised
        # The beat sent at `last_beat_ns` proved the pipeline for the last time; silence since.
        earliest_fire_ns = last_beat_ns + round(line.min_travel_to_fire_s() * NS_PER_S)
        while not raised:
            await clock.advance(NS_PER_MS)
        reject_all_ns = raised[0].at_ns + round(settings.plc_fail_safe_latency_s * NS_PER_S)
        margin_ns = round(settings.fail_safe_margin_s * NS_PER_S)
        assert reject_all_ns <= earliest_fire_ns - margin_ns, (
            f"reject-all at +{(reject_all_ns - last_beat_ns) / 1e6:.0f} ms, first unseen unit fires at "
            f"+{(earliest_fire_ns - last_beat_ns) / 1e6:.0f} ms"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
