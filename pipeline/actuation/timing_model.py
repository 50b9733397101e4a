"""When each unit is at the reject gate.

A verdict is only useful if it reaches the gate before the unit does, and the gate must act
when the unit is in front of it, not when the verdict happens to arrive. `LineTimingModel`
turns a unit's capture (time, or conveyor encoder count) into its `GateTiming`: the deadline
(unit centred on the gate), the fire time (deadline minus the gate's mechanical lead), the
window in which a push still removes it, and the verdict cutoff.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pipeline.core.times import NS_PER_MS, NS_PER_S
from pipeline.settings.actuation import LineTimingSettings


class TimingError(ValueError):
    """A unit whose gate time cannot be computed (e.g. no encoder count on an encoder line)."""


@dataclass(frozen=True)
class UnitRef:
    """A unit as the camera saw it: identity and where/when it was captured."""

    line: str
    unit_id: str
    capture_ns: int
    encoder_count: int | None = None
    lot: str = ""
    # Multi-station lines: how far downstream of the line's trigger point the capturing station
    # saw the unit (its `StationSettings.offset_mm`); the unit is that much closer to the gate.
    offset_mm: float = 0.0


@dataclass(frozen=True)
class GateTiming:
    """When a unit meets the gate (epoch ns)."""

    deadline_ns: int  # unit centred on the gate
    fire_at_ns: int  # command goes out (deadline minus the gate's mechanical lead)
    window_start_ns: int  # first moment a push still removes the unit
    window_end_ns: int  # last moment a push still removes the unit
    verdict_cutoff_ns: int  # a verdict arriving after this is late


class EncoderTracker:
    """Conveyor position/rate from (count, time) samples; extrapolates when a count is reached."""

    def __init__(self, window_ns: int, fallback_counts_per_s: float) -> None:
        self._window_ns = window_ns
        self._fallback = fallback_counts_per_s
        self._samples: deque[tuple[int, int]] = deque()

    def observe(self, count: int, t_ns: int) -> None:
        if self._samples and t_ns < self._samples[-1][0]:
            return  # out-of-order sample: the newest one already describes the belt better
        self._samples.append((t_ns, count))
        while len(self._samples) > 2 and t_ns - self._samples[0][0] > self._window_ns:
            self._samples.popleft()

    def counts_per_s(self) -> float:
        if len(self._samples) >= 2:
            (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
            if t1 > t0:
                return (c1 - c0) * NS_PER_S / (t1 - t0)
        return self._fallback

    def time_of(self, count: int) -> int:
        """Time the belt reaches ``count``; far future while the belt stands still."""
        if not self._samples:
            raise TimingError("no encoder sample yet")
        t_last, c_last = self._samples[-1]
        rate = max(self.counts_per_s(), 1e-6)
        return t_last + round((count - c_last) * NS_PER_S / rate)


class LineTimingModel:
    """One line's camera-to-gate timing (speed mode or encoder mode, see `LineTimingSettings`)."""

    def __init__(self, line: str, settings: LineTimingSettings) -> None:
        self.line = line
        self.settings = settings
        self._lead_ns = round(settings.actuation_lead_ms * NS_PER_MS)
        self._margin_ns = round(settings.verdict_margin_ms * NS_PER_MS)
        self._encoder: EncoderTracker | None = None
        if settings.encoder_mode:
            assert settings.counts_per_mm is not None
            self._offset_counts = settings.resolved_gate_offset_counts()
            self._encoder = EncoderTracker(
                round(settings.encoder_rate_window_s * NS_PER_S),
                settings.conveyor_speed_mm_s * settings.counts_per_mm,
            )

    @property
    def encoder_mode(self) -> bool:
        return self._encoder is not None

    def observe_encoder(self, count: int, t_ns: int) -> None:
        if self._encoder is not None:
            self._encoder.observe(count, t_ns)

    def timing(self, unit: UnitRef) -> GateTiming:
        s = self.settings
        if self._encoder is None:
            travel_ns = round((s.camera_to_gate_mm - unit.offset_mm) / s.conveyor_speed_mm_s * NS_PER_S)
            deadline = unit.capture_ns + travel_ns
            half_window = round(s.gate_window_mm / 2 / s.conveyor_speed_mm_s * NS_PER_S)
        else:
            if unit.encoder_count is None:
                raise TimingError(f"line {self.line} is encoder-timed but unit {unit.unit_id} has no encoder count")
            assert s.counts_per_mm is not None
            to_gate = self._offset_counts - round(unit.offset_mm * s.counts_per_mm)
            deadline = self._encoder.time_of(unit.encoder_count + to_gate)
            rate = max(self._encoder.counts_per_s(), 1e-6)
            half_window = round(s.gate_window_mm / 2 * s.counts_per_mm / rate * NS_PER_S)
        fire_at = deadline - self._lead_ns
        return GateTiming(
            deadline_ns=deadline,
            fire_at_ns=fire_at,
            window_start_ns=deadline - half_window,
            window_end_ns=deadline + half_window,
            verdict_cutoff_ns=fire_at - self._margin_ns,
        )
