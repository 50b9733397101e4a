"""Unit identity from the line: each trigger makes a unit, each station's frame is matched to it by
encoder position.

A unit gets its id where it passes the line's trigger point (infeed photo-eye, encoder latched by
the PLC); a station's camera sees it ``offset`` encoder counts further on. Matching by position,
not by time or frame order, keeps working through speed changes, stops and dropped frames. Every
way a unit can end up without a usable frame at a station (no frame in its window, an incomplete
frame) becomes a `StationMiss`, which the caller turns into a fail-safe reject: a unit is never
passed on a frame it did not get. Frames no unit expected, duplicates and late frames are counted.

Pure logic, no I/O, no clock: the caller supplies encoder positions (see
`pipeline.gateway.triggers`). Not thread-safe: call it from one thread or event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Units kept in flight at most: a caller that never calls `due` must not grow memory forever.
DEFAULT_MAX_IN_FLIGHT = 4096


@dataclass(frozen=True)
class TrackedUnit:
    """One unit as the line identified it: id, and the encoder count where it passed the trigger point."""

    unit_id: str  # f"{lot}-{seq:07d}", as the gateway has always numbered units
    lot: str
    seq: int
    position: int  # encoder count when the unit passed the trigger point
    trigger_ns: int


@dataclass(frozen=True)
class StationMiss:
    """A unit that has no usable frame from a station: it must be rejected."""

    unit: TrackedUnit
    station: str
    reason: str


@dataclass(frozen=True)
class StationStats:
    matched: int = 0  # frames matched to the unit expected there
    unexpected: int = 0  # good frames in no unit's window
    missing: int = 0  # units whose window passed without a frame (overflow evictions included)
    incomplete: int = 0  # incomplete frames (whether or not a unit was expected there)
    duplicate: int = 0  # a further frame for a unit the station already has a result for
    late: int = 0  # a frame for a unit already reported missing at this station


@dataclass(frozen=True)
class TrackerStats:
    triggers: int
    stations: Mapping[str, StationStats]
    in_flight: int


@dataclass
class _Counters:
    matched: int = 0
    unexpected: int = 0
    missing: int = 0
    incomplete: int = 0
    duplicate: int = 0
    late: int = 0


@dataclass
class _Open:
    unit: TrackedUnit
    # station -> "matched" | "missed"; a station absent is still awaited
    done: dict[str, str] = field(default_factory=dict)


class UnitTracker:
    """Units in flight on one line, and which station frames they got.

    ``station_offsets``: station -> encoder counts from the trigger point to where its camera sees
    a unit. ``tolerance_counts``: how far a frame's position may be from the expected one; keep it
    at half the unit pitch or less so that a frame is never in two units' windows.
    """

    def __init__(
        self,
        line: str,
        lot: str,
        station_offsets: Mapping[str, int],
        tolerance_counts: int,
        first_seq: int = 0,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if not station_offsets:
            raise ValueError(f"line {line!r}: no stations to match frames for")
        if tolerance_counts < 0:
            raise ValueError(f"tolerance_counts must be >= 0, got {tolerance_counts}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.line, self.lot = line, lot
        self._offsets = dict(station_offsets)
        self._tol = tolerance_counts
        self._next_seq = first_seq
        self._max_in_flight = max_in_flight
        self._last_window = max(self._offsets.values()) + tolerance_counts
        self._open: dict[int, _Open] = {}  # by seq, in trigger order
        self._evicted: list[StationMiss] = []  # misses of units pushed out by overflow, for `due`
        self._triggers = 0
        self._counts = {name: _Counters() for name in self._offsets}

    # ---- events

    def on_trigger(self, position: int, trigger_ns: int) -> TrackedUnit:
        """A unit passed the trigger point at encoder ``position``: it gets the next id.

        Triggers come in position order; one behind the last means the encoder count was reset
        (PLC restart): the units in flight can no longer be placed, so each station still awaited
        is missed (reported by the next `due`)."""
        last = next(reversed(self._open.values())).unit.position if self._open else None
        if last is not None and position < last:
            for entry in self._open.values():
                self._drop(entry, f"encoder went back from {last} to {position} (counter reset): unit can no longer be placed")
            self._open.clear()
        seq = self._next_seq
        self._next_seq += 1
        self._triggers += 1
        unit = TrackedUnit(f"{self.lot}-{seq:07d}", self.lot, seq, position, trigger_ns)
        self._open[seq] = _Open(unit)
        while len(self._open) > self._max_in_flight:
            # Never silently forgotten: whatever the oldest unit still awaited is reported missing.
            self._drop(self._open.pop(next(iter(self._open))), f"dropped from tracking ({self._max_in_flight} units in flight)")
        return unit

    def on_frame(self, station: str, position: int) -> TrackedUnit | None:
        """A good frame from ``station`` taken at encoder ``position``: the unit it shows, or None
        when it is no unit's (outside every window), a duplicate, or late (counted in `stats`)."""
        counts = self._station(station)
        entry = self._nearest(station, position)
        if entry is None:
            counts.unexpected += 1
            return None
        state = entry.done.get(station)
        if state == "matched":
            counts.duplicate += 1
            return None
        if state == "missed":
            counts.late += 1
            return None
        entry.done[station] = "matched"
        counts.matched += 1
        return entry.unit

    def on_bad_frame(self, station: str, position: int, why: str) -> StationMiss | None:
        """An incomplete frame from ``station`` at ``position``: the unit expected there is missed
        at that station. None when no unit awaits a frame there (its own window will report it)."""
        counts = self._station(station)
        counts.incomplete += 1
        entry = self._nearest(station, position)
        if entry is None:
            return None
        state = entry.done.get(station)
        if state is not None:
            counts.duplicate += 1
            return None
        entry.done[station] = "missed"
        return StationMiss(entry.unit, station, f"station {station}: incomplete frame at encoder {position} ({why})")

    def due(self, position: int) -> list[StationMiss]:
        """Units whose window at a station ended before encoder ``position`` with no frame, each
        reported once; units done at every station and past every window are forgotten.

        Pass the position up to which frames have surely arrived (the current encoder position
        less the frame delivery latency), or a frame still in transfer is reported missing (and
        then counted late when it comes).
        """
        misses, self._evicted = self._evicted, []
        finished: list[int] = []
        for seq, entry in self._open.items():
            start = entry.unit.position
            if start + min(self._offsets.values()) + self._tol >= position:
                break  # triggers come in position order: no later unit has a window that ended
            for station, offset in self._offsets.items():
                expected = start + offset
                if station in entry.done or expected + self._tol >= position:
                    continue
                entry.done[station] = "missed"
                self._counts[station].missing += 1
                misses.append(StationMiss(
                    entry.unit, station,
                    f"station {station}: no frame by encoder {position} (unit expected at {expected} +- {self._tol})",
                ))
            if len(entry.done) == len(self._offsets) and start + self._last_window < position:
                finished.append(seq)
        for seq in finished:
            del self._open[seq]
        return misses

    # ---- state

    @property
    def stats(self) -> TrackerStats:
        stations = {name: StationStats(**vars(c)) for name, c in self._counts.items()}
        return TrackerStats(self._triggers, stations, len(self._open))

    @property
    def next_seq(self) -> int:
        """The sequence number the next trigger gets (to continue a lot after a restart)."""
        return self._next_seq

    def expected_position(self, unit: TrackedUnit, station: str) -> int:
        """Where ``station`` sees ``unit``, in encoder counts (to software-trigger its camera)."""
        self._station(station)
        return unit.position + self._offsets[station]

    # ---- internals

    def _station(self, station: str) -> _Counters:
        counts = self._counts.get(station)
        if counts is None:
            raise KeyError(f"line {self.line!r} has no station {station!r} (stations: {', '.join(self._offsets)})")
        return counts

    def _drop(self, entry: _Open, why: str) -> None:
        """Stop tracking a unit: every station still awaited is missed (reported by `due`)."""
        for station in self._offsets:
            if station not in entry.done:
                self._counts[station].missing += 1
                self._evicted.append(StationMiss(entry.unit, station, f"station {station}: {why}"))

    def _nearest(self, station: str, position: int) -> _Open | None:
        """The unit whose expected position at ``station`` is nearest ``position``, within tolerance."""
        origin = position - self._offsets[station]  # the trigger position of a unit seen exactly here
        best: _Open | None = None
        best_gap = self._tol + 1
        for entry in self._open.values():
            gap = abs(entry.unit.position - origin)
            if gap < best_gap:
                best, best_gap = entry, gap
        return best
