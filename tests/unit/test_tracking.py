"""`UnitTracker`: units get ids at the trigger point, station frames are matched to them by encoder
position, and every unit a station has no good frame of is reported (to be rejected), once."""

from __future__ import annotations

import random

import pytest

from pipeline.gateway.tracking import StationMiss, TrackedUnit, UnitTracker

PITCH = 1000  # encoder counts between units
TOL = 200
OFFSETS = {"top": 3000, "side": 5500, "bottom": 9200}


def tracker(**kw: object) -> UnitTracker:
    args: dict[str, object] = dict(line="l1", lot="LOT1", station_offsets=OFFSETS, tolerance_counts=TOL)
    args.update(kw)
    return UnitTracker(**args)  # type: ignore[arg-type]


def test_ids_follow_the_lot_convention_and_a_frame_within_tolerance_finds_its_unit() -> None:
    t = tracker(first_seq=41)
    a = t.on_trigger(10_000, 1)
    b = t.on_trigger(10_000 + PITCH, 2)
    assert (a.unit_id, a.seq, a.lot, a.position, a.trigger_ns) == ("LOT1-0000041", 41, "LOT1", 10_000, 1)
    assert b.unit_id == "LOT1-0000042"
    assert t.on_frame("top", 13_000 + TOL) == a  # edge of the window
    assert t.on_frame("top", 14_000 - TOL) == b
    assert t.on_frame("side", 15_500 - 37) == a
    stats = t.stats
    assert stats.triggers == 2 and stats.stations["top"].matched == 2 and stats.stations["side"].matched == 1


def test_a_frame_outside_every_window_is_unexpected() -> None:
    t = tracker()
    t.on_trigger(0, 0)
    assert t.on_frame("top", 3000 + TOL + 1) is None
    assert t.on_frame("top", 3000 - TOL - 1) is None
    assert t.on_frame("side", 0) is None
    fresh = tracker()
    assert fresh.on_frame("bottom", 9200) is None  # before any trigger
    assert t.stats.stations["top"].unexpected == 2 and t.stats.stations["side"].unexpected == 1
    assert fresh.stats.stations["bottom"].unexpected == 1
    with pytest.raises(KeyError, match="no station 'nope'"):
        t.on_frame("nope", 3000)


def test_a_trigger_with_no_frame_is_missed_once_its_window_has_passed() -> None:
    t = tracker()
    u = t.on_trigger(500, 7)
    assert t.on_frame("top", 3500) == u
    assert t.on_frame("bottom", 9700) == u
    assert t.due(500 + 5500 + TOL) == []  # the window's last count: a frame there would still match
    (miss,) = t.due(500 + 5500 + TOL + 1)
    assert miss == StationMiss(u, "side", f"station side: no frame by encoder {6201} (unit expected at 6000 +- {TOL})")
    assert t.due(100_000) == []  # reported once
    assert t.stats.stations["side"].missing == 1
    assert t.stats.in_flight == 0  # done at every station and past every window: forgotten
    assert t.on_frame("side", 6000) is None  # its frame, after all: nobody's any more


def test_a_frame_arriving_after_its_unit_was_reported_missing_is_late_not_matched() -> None:
    t = tracker()
    u = t.on_trigger(0, 0)
    (miss,) = [m for m in t.due(3000 + TOL + 1) if m.station == "top"]
    assert miss.unit == u
    assert t.on_frame("top", 3000) is None
    assert t.stats.stations["top"].late == 1 and t.stats.stations["top"].matched == 0


def test_an_incomplete_frame_misses_its_unit_at_that_station() -> None:
    t = tracker()
    u = t.on_trigger(0, 0)
    v = t.on_trigger(PITCH, 0)
    miss = t.on_bad_frame("side", 5500 + 30, "frame 812: missing-packets")
    assert miss == StationMiss(u, "side", "station side: incomplete frame at encoder 5530 (frame 812: missing-packets)")
    # A good frame for the same unit afterwards cannot un-reject it.
    assert t.on_frame("side", 5500) is None
    assert t.on_bad_frame("side", 99_999, "timeout") is None  # nobody's: counted, reported by windows
    assert t.on_frame("side", 6500) == v
    assert [(m.unit, m.station) for m in t.due(50_000)] == [(u, "top"), (u, "bottom"), (v, "top"), (v, "bottom")]
    s = t.stats.stations["side"]
    assert (s.incomplete, s.late, s.matched, s.missing) == (2, 1, 1, 0)


def test_a_second_frame_for_the_same_unit_is_a_duplicate_not_matched_twice() -> None:
    t = tracker()
    u = t.on_trigger(0, 0)
    assert t.on_frame("top", 3010) == u
    assert t.on_frame("top", 2990) is None
    assert t.on_bad_frame("top", 3000, "incomplete") is None  # after a good one: also a duplicate
    s = t.stats.stations["top"]
    assert (s.matched, s.duplicate, s.incomplete) == (1, 2, 1)


def test_many_units_in_flight_across_three_stations_with_jitter_and_speed_changes() -> None:
    """Units enter at an irregular pitch (speed changes move units apart in time, not in counts,
    but infeed spacing varies too); frames arrive interleaved across stations with position
    jitter; some frames are dropped, some incomplete. Every unit ends matched or missed at every
    station, exactly once."""
    rng = random.Random(7)
    t = tracker(tolerance_counts=300)
    units: list[TrackedUnit] = []
    pos = 0
    for _ in range(400):
        pos += rng.randint(700, 1400)  # >= 2 x tolerance apart
        units.append(t.on_trigger(pos, pos * 1000))
    dropped = {(u.seq, s) for u in units for s in OFFSETS if rng.random() < 0.03}
    bad = {(u.seq, s) for u in units for s in OFFSETS if rng.random() < 0.03} - dropped
    events = sorted(
        ((u.position + off + rng.randint(-250, 250), s, u) for u in units for s, off in OFFSETS.items()),
        key=lambda e: e[0],
    )
    matched: dict[tuple[int, str], TrackedUnit] = {}
    missed: list[StationMiss] = []
    for frame_pos, station, unit in events:
        missed += t.due(frame_pos - 2000)  # frames delivered up to ~2000 counts late
        key = (unit.seq, station)
        if key in dropped:
            continue
        if key in bad:
            m = t.on_bad_frame(station, frame_pos, "missing-packets")
            assert m is not None and m.unit == unit
            missed.append(m)
            continue
        assert t.on_frame(station, frame_pos) == unit
        matched[key] = unit
    missed += t.due(pos + 100_000)
    missed_keys = [(m.unit.seq, m.station) for m in missed]
    assert sorted(missed_keys) == sorted(dropped | bad)  # each once
    assert set(matched) | set(missed_keys) == {(u.seq, s) for u in units for s in OFFSETS}
    stats = t.stats
    assert stats.triggers == 400 and stats.in_flight == 0
    assert sum(s.matched for s in stats.stations.values()) == len(matched)
    assert sum(s.missing for s in stats.stations.values()) == len(dropped)
    assert sum(s.incomplete for s in stats.stations.values()) == len(bad)
    assert all(s.unexpected == 0 and s.duplicate == 0 and s.late == 0 for s in stats.stations.values())


def test_matching_is_by_position_so_a_stopped_or_faster_line_changes_nothing() -> None:
    """The same positions at very different times (line stopped between units, then fast)."""
    t = tracker()
    a = t.on_trigger(0, trigger_ns=0)
    b = t.on_trigger(PITCH, trigger_ns=60 * 10**9)  # a minute later: the line stood still
    c = t.on_trigger(2 * PITCH, trigger_ns=60 * 10**9 + 10**6)  # 1 ms later: fast
    assert t.on_frame("top", 3000 + 2 * PITCH + 5) == c
    assert t.on_frame("top", 3000 - 5) == a
    assert t.on_frame("top", 3000 + PITCH) == b


def test_memory_is_bounded_and_overflowed_units_are_reported_not_forgotten() -> None:
    t = tracker(max_in_flight=10)
    units = [t.on_trigger(i * PITCH, i) for i in range(15)]
    assert t.stats.in_flight == 10
    misses = t.due(0)  # nothing due by position; the evicted ones are reported anyway
    assert {m.unit for m in misses} == set(units[:5]) and len(misses) == 5 * len(OFFSETS)
    assert all("dropped from tracking" in m.reason for m in misses)
    assert t.due(0) == []


def test_an_encoder_reset_misses_every_unit_in_flight_at_the_stations_still_awaited() -> None:
    t = tracker()
    a = t.on_trigger(50_000, 0)
    b = t.on_trigger(51_000, 0)
    assert t.on_frame("top", 53_000) == a
    c = t.on_trigger(100, 0)  # the PLC restarted: counts start again
    misses = t.due(0)
    assert [(m.unit, m.station) for m in misses] == [(a, "side"), (a, "bottom"), (b, "top"), (b, "side"), (b, "bottom")]
    assert all("counter reset" in m.reason for m in misses)
    assert t.stats.in_flight == 1 and t.on_frame("top", 3100) == c


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="no stations"):
        tracker(station_offsets={})
    with pytest.raises(ValueError, match="tolerance"):
        tracker(tolerance_counts=-1)
