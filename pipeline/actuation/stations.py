"""Multi-station units: one verdict per unit from every station its line declares.

A line with `LineTimingSettings.stations` sees each unit with several cameras; the worker judges
each station's frame on its own. Positive release stays the rule: a unit is released only when
every declared station passed it. `StationUnits` is the actuator's bookkeeping for that, pure
logic (no broker, no event loop) and thread-safe, since the gate's callbacks run on another thread:

* `frame`: is a station frame the unit's first (admit it, timed from that station), another
  declared station's frame of a known unit (not a second capture), a redelivery, a second capture
  by the same station (a conflict, as on a one-camera line), or from a station the line does not
  declare (refused as bad input)?
* `result`: record one station's verdict; answer the unit's combined verdict when it changes to a
  stricter one: reject at once when any station rejects, review when the worst is review and every
  station is in, pass when every station passed. Until then nothing is submitted, so a station
  result missing at the cutoff leaves the unit to the scheduler's late (fail-safe) reject.
* `close`: when the gate decided the unit, its `UnitVerdict`, naming the rejecting or missing
  stations in its reason.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import cast

from pipeline.settings.actuation import LineTimingSettings, StationSettings
from pipeline.wire.messages import InspectionResult, UnitVerdict, Verdict

RANK = {"pass": 0, "review": 1, "reject": 2}


class FrameKind(StrEnum):
    FIRST = "first"  # the unit's first station frame: admit it, timed from this station
    OTHER_STATION = "other_station"  # another declared station's frame of a known unit
    REDELIVERED = "redelivered"  # the same station's frame again (same capture time)
    SECOND_CAPTURE = "second_capture"  # the same station captured this unit id again: a conflict
    UNDECLARED = "undeclared"  # a station the line does not declare: refused


@dataclass(frozen=True)
class Combined:
    """A unit's combined verdict to submit: the deciding station names the defect (reject, review)."""

    verdict: str  # pass, review or reject
    station: str = ""
    defect: str = "none"
    cause: str = "model"


@dataclass
class _Unit:
    frames: dict[str, int] = field(default_factory=dict)  # station -> capture ns
    results: dict[str, InspectionResult] = field(default_factory=dict)  # station -> its worst result
    submitted: str = ""  # the combined verdict already submitted ('' none)
    product: str = ""
    lot: str = ""
    commands: list[str] = field(default_factory=list)  # reasons of fail-safe reject commands


class StationUnits:
    """Per-unit station bookkeeping of the lines that declare stations (bounded memory)."""

    def __init__(self, lines: Mapping[str, LineTimingSettings], capacity: int = 100_000) -> None:
        self._stations: dict[str, list[StationSettings]] = {n: list(s.stations) for n, s in lines.items() if s.stations}
        self._units: OrderedDict[tuple[str, str], _Unit] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def declares(self, line: str) -> bool:
        """Whether ``line`` is a multi-station line."""
        return line in self._stations

    def station(self, line: str, name: str) -> StationSettings | None:
        return next((s for s in self._stations.get(line, []) if s.name == name), None)

    def station_of_camera(self, line: str, camera: str) -> StationSettings | None:
        """The station whose camera (serial) this is: a reject command names the camera only."""
        return next((s for s in self._stations.get(line, []) if s.camera == camera), None)

    def names(self, line: str) -> list[str]:
        return [s.name for s in self._stations.get(line, [])]

    def frame(self, line: str, unit_id: str, station: str, capture_ns: int, product: str = "", lot: str = "") -> FrameKind:
        """What a frame of ``station`` is for its unit (see `FrameKind`)."""
        if self.station(line, station) is None:
            return FrameKind.UNDECLARED
        with self._lock:
            u = self._unit(line, unit_id)
            u.product, u.lot = u.product or product, u.lot or lot
            first = u.frames.get(station)
            if first is None:
                u.frames[station] = capture_ns
                return FrameKind.FIRST if len(u.frames) == 1 else FrameKind.OTHER_STATION
            return FrameKind.REDELIVERED if first == capture_ns else FrameKind.SECOND_CAPTURE

    def result(self, r: InspectionResult) -> Combined | None:
        """Record a declared station's result; the combined verdict to submit when it got stricter."""
        with self._lock:
            u = self._unit(r.line, r.unit_id)
            u.product, u.lot = u.product or r.product, u.lot or r.lot
            before = u.results.get(r.station)
            if before is None or RANK[r.verdict] > RANK[before.verdict]:
                u.results[r.station] = r
            combined = self._combine(r.line, u)
            if combined is None or (u.submitted and RANK[combined.verdict] <= RANK[u.submitted]):
                return None
            u.submitted = combined.verdict
            return combined

    def command(self, line: str, unit_id: str, reason: str) -> None:
        """A fail-safe reject command for the unit (the gateway's or the worker's): its reason is kept."""
        with self._lock:
            u = self._unit(line, unit_id)
            if reason and reason not in u.commands:
                u.commands.append(reason[:300])

    def close(self, line: str, unit_id: str, *, released: bool, cause: str, decided_ns: int,
              gate_reason: str = "") -> UnitVerdict:
        """The unit's verdict now that the gate decided it (``released``: let through)."""
        with self._lock:
            u = self._units.pop((line, unit_id), None) or _Unit()
        names = self.names(line)
        present = [n for n in names if n in u.results]
        missing = [n for n in names if n not in u.results]
        worst = max((RANK[u.results[n].verdict] for n in present), default=0)
        verdict: Verdict = "pass" if released else ("review" if worst == 1 and not missing and cause == "model"
                                                    and not u.commands else "reject")
        reasons = [f"station {n} {u.results[n].verdict}: {u.results[n].defect}" for n in present
                   if u.results[n].verdict != "pass"]
        if missing and not released:
            which = f"station {missing[0]}" if len(missing) == 1 else f"stations {', '.join(missing)}"
            reasons.append(f"no verdict from {which} by the cutoff")
        reasons += u.commands
        if gate_reason:
            reasons.append(gate_reason)
        if released:
            reasons = ["every station passed"]
        stations = [
            cast("dict[str, str | float | None]", {
                "station": n, "verdict": r.verdict, "score": r.score, "defect": r.defect,
                "model_version": r.model_version, "camera": r.camera,
            })
            for n in present
            for r in (u.results[n],)
        ]
        product = u.product or next((u.results[n].product for n in present), "")
        return UnitVerdict(unit_id=unit_id, line=line, lot=u.lot, product=product, verdict=verdict, cause=cause,
                           decided_ns=decided_ns, stations=stations, missing=missing if not released else [],
                           reason="; ".join(reasons)[:1000])

    # ---- internals (under the lock)

    def _unit(self, line: str, unit_id: str) -> _Unit:
        key = (line, unit_id)
        u = self._units.get(key)
        if u is None:
            u = self._units[key] = _Unit()
            if len(self._units) > self._capacity:
                self._units.popitem(last=False)
        return u

    def _combine(self, line: str, u: _Unit) -> Combined | None:
        names = self.names(line)
        present = [u.results[n] for n in names if n in u.results]
        worst = max(present, key=lambda r: RANK[r.verdict], default=None)
        if worst is None:
            return None
        if worst.verdict == "reject":
            return Combined("reject", worst.station, worst.defect, worst.cause)
        if len(present) < len(names):
            return None  # wait for the other stations (missing at the cutoff: late reject)
        if worst.verdict == "review":
            return Combined("review", worst.station, worst.defect, worst.cause)
        return Combined("pass")
