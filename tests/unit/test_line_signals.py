"""The line's signals: encoder and camera clocks, and the PLC's encoder and infeed trigger ring read
over OPC UA (`PlcLineSignals`) against the simulated PLC (`PlcSimulator.run_line`) on the loopback.

No fixed sleeps: conditions are polled until a deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from functools import partial

import pytest
import pytest_asyncio
from support import eventually_async, fast_plc

from pipeline.actuation.plc.simulator import PlcSimulator, UnitPassage
from pipeline.embedded.process import free_port
from pipeline.gateway.tracking import UnitTracker
from pipeline.gateway.triggers import (
    CameraClock,
    EncoderClock,
    LineSignalsState,
    PlcLineSignals,
    Trigger,
)
from pipeline.settings.actuation import PlcNodeIds

MS = 1_000_000
S = 1_000_000_000
RING = 32

eventually = partial(eventually_async, timeout_s=15.0, poll_s=0.01)

# One event loop and one simulated PLC for the module (an asyncua server takes ~2 s to build); the
# pure clock and ring tests are async only to share the module's marks.
pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="module")]


# ---- EncoderClock


async def test_encoder_clock_interpolates_between_samples_and_extrapolates_only_a_little() -> None:
    clock = EncoderClock(max_extrapolation_s=0.1, rate_window_s=1.0)
    assert clock.position_at(0) is None and clock.rate() is None
    clock.add(1 * S, 1000)
    assert clock.position_at(1 * S) == 1000
    assert clock.position_at(1 * S + 1) is None  # one sample: no rate to extrapolate with
    clock.add(2 * S, 3000)  # 2000 counts/s
    clock.add(3 * S, 3000)  # stopped
    clock.add(4 * S, 7000)  # 4000 counts/s
    assert clock.position_at(S // 2) is None  # before the history
    assert clock.position_at(1 * S + 250 * MS) == 1500
    assert clock.position_at(2 * S + 500 * MS) == 3000
    assert clock.position_at(3 * S + 250 * MS) == 4000
    assert clock.rate() == 4000.0
    assert clock.position_at(4 * S + 50 * MS) == 7200  # at the observed rate
    assert clock.position_at(4 * S + 101 * MS) is None  # samples stopped: no guessing
    clock.add(3 * S + 500 * MS, 1)  # older than the last sample: ignored
    assert clock.last == (4 * S, 7000)
    # The inverse: when the encoder reached a count (its first time: the belt stood at 3000).
    assert clock.time_at(2000) == 1 * S + 500 * MS
    assert clock.time_at(3000) == 2 * S
    assert clock.time_at(5000) == 3 * S + 500 * MS
    assert clock.time_at(7400) == 4 * S + 100 * MS
    assert clock.time_at(7404) is None and clock.time_at(999) is None
    clock.add(5 * S, 20)  # the counter was reset (PLC restart): nothing interpolates across it
    assert clock.resets == 1 and clock.position_at(4 * S + 500 * MS) is None and clock.position_at(5 * S) == 20


async def test_encoder_clock_history_is_bounded() -> None:
    clock = EncoderClock(history_s=1.0, max_samples=50)
    for i in range(1000):
        clock.add(i * 10 * MS, i)
    assert clock.position_at(0) is None
    assert clock.position_at(999 * 10 * MS - 400 * MS) == 959
    assert len(clock._t) <= 50


# ---- CameraClock


async def test_camera_clock_takes_the_minimum_delay_as_the_offset_despite_noisy_delays() -> None:
    rng = random.Random(3)
    true_offset = 1_700_000_000 * S - 12_345 * MS  # host epoch - camera ticks since power-on
    cam = CameraClock(window_s=5.0)
    with pytest.raises(LookupError):
        cam.host_ns(0)
    for i in range(300):  # 30 fps for 10 s, transfer delays 0.3 ms + exponential (mean 4 ms), some spikes
        camera_ts = 12_345 * MS + i * 33 * MS
        delay = 300_000 + int(rng.expovariate(1 / (4 * MS))) + (50 * MS if i % 37 == 0 else 0)
        cam.observe(camera_ts, camera_ts + true_offset + delay)
    err = cam.host_ns(20_000 * MS) - (20_000 * MS + true_offset)
    assert 300_000 <= err < 1 * MS, err  # the minimum delay, not the mean (4 ms) nor a spike


async def test_camera_clock_follows_drift_within_its_window_and_restarts_on_a_camera_reset() -> None:
    cam = CameraClock(window_s=1.0)
    drift_ppm = 200  # camera clock slow against the host
    for i in range(600):  # 60 s at 10 fps, constant 1 ms delay
        host = 1000 * S + i * 100 * MS
        camera_ts = i * 100 * MS - (i * 100 * MS * drift_ppm) // 1_000_000
        cam.observe(camera_ts, host + 1 * MS)
    now_cam = 600 * 100 * MS - (600 * 100 * MS * drift_ppm) // 1_000_000
    truth = 1000 * S + 600 * 100 * MS
    # A fixed offset would be off by 200 ppm x 60 s = 12 ms; the window keeps it to ~ drift x 1 s.
    assert abs(cam.host_ns(now_cam) - truth) < 1 * MS + 300_000
    cam.observe(5 * MS, 2000 * S)  # camera rebooted: its clock starts again
    assert cam.resets == 1
    assert cam.host_ns(5 * MS) == 2000 * S


# ---- PlcLineSignals, offline: the ring logic


async def test_triggers_come_from_the_ring_in_order_torn_reads_wait_and_overwrites_are_lost() -> None:
    got: list[Trigger] = []
    sig = PlcLineSignals(fast_plc("opc.tcp://127.0.0.1:1/x"), on_trigger=got.append)
    sig.plc_trigger_count = 5
    latches, ids = [0] * 4, [0] * 4
    for n, pos in ((6, 600), (7, 700)):
        latches[n % 4], ids[n % 4] = pos, n
    sig._take(8, latches, ids, now_ns=1)  # trigger 8 counted but its slot not yet written: torn
    assert [(t.number, t.position) for t in got] == [(6, 600), (7, 700)] and sig.stats.torn == 1
    latches[8 % 4], ids[8 % 4] = 800, 8
    sig._take(8, latches, ids, now_ns=1)
    assert got[-1].number == 8 and sig.plc_trigger_count == 8
    for n in range(9, 15):  # six more, ring of four: 9 and 10 overwritten
        latches[n % 4], ids[n % 4] = n * 100, n
    sig._take(14, latches, ids, now_ns=1)
    assert [t.number for t in got] == [6, 7, 8, 11, 12, 13, 14] and sig.stats.lost == 2
    sig._take(2, latches, ids, now_ns=1)  # PLC restarted: its counter starts again
    assert sig.stats.counter_resets == 1 and sig.plc_trigger_count == 2


# ---- PlcLineSignals against the simulated PLC

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_plc() -> AsyncIterator[PlcSimulator]:
    async with PlcSimulator(free_port(), heartbeat_interval_s=0.05, trigger_ring=RING, encoder_start=10_000) as plc:
        yield plc


@pytest_asyncio.fixture(loop_scope="module")
async def plc(shared_plc: PlcSimulator) -> AsyncIterator[PlcSimulator]:
    await shared_plc.reset_faults()
    yield shared_plc
    await shared_plc.stop_line()
    await shared_plc.reset_faults()


async def started(plc: PlcSimulator, **kw: object) -> PlcLineSignals:
    sig = PlcLineSignals(fast_plc(plc.endpoint), **kw)  # type: ignore[arg-type]
    await sig.start()
    assert await sig.wait_connected(15), sig.state_reason
    return sig


def collect(sig: PlcLineSignals, into: list[Trigger]) -> bool:
    into += sig.drain()
    return True


async def test_n_units_entering_give_n_triggers_with_their_latched_positions_none_lost(plc: PlcSimulator) -> None:
    await plc.run_line(500, counts_per_mm=10, pitch_mm=25, units=3)  # before we listen: not ours
    await eventually(lambda: plc.trigger_count >= 3, what="3 early triggers")
    await plc.stop_line()
    before = plc.trigger_count
    sig = await started(plc, poll_s=0.05)
    try:
        n = 60
        # 100 units/s, a poll every 50 ms: several triggers per poll, well inside the ring.
        await plc.run_line(2500, counts_per_mm=10, pitch_mm=25, units=n)
        got: list[Trigger] = []
        await eventually(lambda: collect(sig, got) and len(got) >= n, what=f"{n} triggers")
        assert [t.number for t in got] == list(range(before + 1, before + n + 1))
        assert [t.position for t in got] == plc.trigger_positions[-n:]
        steps = {b.position - a.position for a, b in zip(got, got[1:], strict=False)}
        assert steps == {250}  # one pitch in counts
        assert sig.stats.lost == 0 and sig.stats.polls < n  # more than one trigger per poll, on average
        # Trigger times come from the encoder clock: 10 ms apart at this speed.
        gaps = [(b.trigger_ns - a.trigger_ns) / MS for a, b in zip(got, got[1:], strict=False)]
        assert 8.0 < sum(gaps) / len(gaps) < 12.0, gaps
    finally:
        await sig.stop()


async def test_the_encoder_clock_tracks_the_plc_encoder(plc: PlcSimulator) -> None:
    sig = await started(plc, poll_s=0.01)
    try:
        await plc.run_line(300, counts_per_mm=8, pitch_mm=100)  # 2400 counts/s
        await eventually(lambda: (sig.clock.rate() or 0) > 2000, what="encoder rate")
        for _ in range(20):
            estimate = sig.clock.position_at(time.time_ns())
            truth = plc.encoder_count
            # Loopback read latency on a loaded host: a few ms, i.e. a few tens of counts.
            assert estimate is not None and abs(estimate - truth) < 120, (estimate, truth)
            await asyncio.sleep(0.02)
        plc.set_line_speed(0)
        await eventually(lambda: sig.clock.rate() == 0.0, what="encoder stopped")
        stopped = plc.encoder_count
        assert sig.clock.position_at(time.time_ns()) == stopped
    finally:
        await sig.stop()


async def test_a_poll_slower_than_the_ring_counts_the_lost_triggers(plc: PlcSimulator) -> None:
    sig = await started(plc, poll_s=0.8)
    try:
        before = plc.trigger_count
        await plc.run_line(2000, counts_per_mm=10, pitch_mm=10, units=200)  # 200/s: > RING per poll
        got: list[Trigger] = []
        await eventually(
            lambda: collect(sig, got) and sig.plc_trigger_count == before + 200, what="the run read to its end"
        )
        assert sig.stats.lost > 0 and len(got) + sig.stats.lost == 200
        by_number = dict(zip(range(before + 1, before + 201), plc.trigger_positions[-200:], strict=True))
        assert all(t.number is not None and by_number[t.number] == t.position for t in got)
    finally:
        await sig.stop()


async def test_triggers_latched_while_the_link_was_down_are_recovered_from_the_ring(plc: PlcSimulator) -> None:
    sig = await started(plc, poll_s=0.01)
    try:
        await plc.run_line(200, counts_per_mm=10, pitch_mm=20, units=30)  # 10 units/s
        before = plc.trigger_count
        got: list[Trigger] = []
        await eventually(lambda: collect(sig, got) and len(got) >= 3, what="first triggers")
        await plc.go_offline()
        await eventually(lambda: sig.state is LineSignalsState.UNREACHABLE, what="link loss noticed")
        at_loss = plc.trigger_count
        await eventually(lambda: plc.trigger_count >= at_loss + 5, what="triggers while offline")
        await plc.go_online()
        await eventually(lambda: collect(sig, got) and len(got) >= 30, what="all 30 triggers")
        assert [t.number for t in got] == list(range(before + 1, before + 31))
        assert [t.position for t in got] == plc.trigger_positions[-30:]
        assert sig.stats.lost == 0 and sig.stats.reconnects >= 1
    finally:
        await sig.stop()


async def test_a_plc_without_the_line_tags_is_unreachable_with_the_tag_names(plc: PlcSimulator) -> None:
    nodes = PlcNodeIds(trigger_count="ns=2;s=Nope.TriggerCount")
    sig = PlcLineSignals(fast_plc(plc.endpoint, nodes=nodes))
    await sig.start()
    try:
        await eventually(lambda: "trigger_count=ns=2;s=Nope.TriggerCount" in sig.state_reason, what="tag error")
        assert sig.state is LineSignalsState.UNREACHABLE
    finally:
        await sig.stop()


async def test_station_frames_find_their_units_through_speed_changes(plc: PlcSimulator) -> None:
    """The whole path: PLC triggers give units; each station's camera fires when the simulated PLC
    says a unit reached it (the hook), and the frame's time, put on the encoder clock, is matched
    to the unit by the tracker, while the line runs at three speeds and stops once."""
    cpm, pitch = 10.0, 40.0
    stations_mm = {"top": 60.0, "side": 130.0, "bottom": 210.0}
    frames: list[tuple[str, int, UnitPassage]] = []  # station, host ns, what the simulator knew
    for name, mm in stations_mm.items():
        plc.on_unit_at(mm, lambda p, name=name: frames.append((name, time.time_ns(), p)))
    sig = await started(plc, poll_s=0.005)
    tracker = UnitTracker("l1", "LOT9", {n: round(mm * cpm) for n, mm in stations_mm.items()}, round(pitch * cpm / 2))
    try:
        n = 24
        await plc.run_line(250, counts_per_mm=cpm, pitch_mm=pitch, units=n)
        units = {}
        matched: dict[tuple[str, int], str] = {}
        done = 0

        def pump() -> bool:
            nonlocal done
            for t in sig.drain():
                unit = tracker.on_trigger(t.position, t.trigger_ns)
                assert t.number is not None
                units[t.number] = unit.unit_id
            while done < len(frames):
                station, host_ns, passage = frames[done]
                position = sig.clock.position_at(host_ns)
                if position is None:  # the clock has no sample past the frame yet
                    break
                if passage.trigger not in units:  # its trigger not polled yet
                    break
                hit = tracker.on_frame(station, position)
                assert hit is not None, (station, position, passage)
                matched[(station, passage.trigger)] = hit.unit_id
                done += 1
            return done == n * len(stations_mm)

        await eventually(lambda: pump() or len(frames) >= n, what="first units at the stations")
        plc.set_line_speed(300)  # tolerance 200 counts: 67 ms of event-loop lag at this speed (a loaded 2-core CI)
        await eventually(lambda: pump() or len(frames) >= 2 * n, what="units at 300 mm/s")
        plc.set_line_speed(0)
        await eventually(lambda: pump() or done == len(frames), what="frames so far matched, line stopped")
        plc.set_line_speed(150)
        await eventually(pump, what="every frame matched")
        assert all(matched[(s, num)] == units[num] for s, num in matched)
        assert tracker.due(plc.encoder_count + 10_000) == []
        stats = tracker.stats
        assert stats.triggers == n
        assert all(s.matched == n and s.unexpected == 0 and s.missing == 0 for s in stats.stations.values())
    finally:
        await sig.stop()
