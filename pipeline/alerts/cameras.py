"""Camera health detectors, fed with the gateway's `CameraStatus` messages (pure: no I/O, no
clock; the caller passes every time).

- ``camera_lost``: the gateway reports the camera disconnected (raised on that message, so
  within a second of the camera layer noticing), or its status went silent for longer than
  `CameraLimits.silent_s` (the gateway died with it; checked by the alert service's 1 s ticker);
  cleared by a status saying it is connected, or by the gateway's last status as it stops
  (``running=False``: the camera is no longer watched, by design).
- ``camera_rate_drift``: frames against the line's units over a window differ by more than a
  tolerance, for a sustained time. A triggered camera takes exactly one frame per unit, so this
  is a camera missing triggers, triggered twice, or free-running at its own rate.
- ``camera_timestamp_gap``: two consecutive camera timestamps further apart than `gap_factor`
  unit intervals: an exposure the camera never made. Raised at once, cleared after `gap_clear_s`
  without another.

One alert per line and kind (the alert book's key); its message names the cameras concerned.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pipeline.core.times import NS_PER_S
from pipeline.wire.messages import CameraStatus


@dataclass(frozen=True)
class CameraLimits:
    silent_s: float = 1.0
    rate_window_s: float = 5.0
    rate_tolerance: float = 0.1
    rate_sustain_s: float = 5.0
    rate_min_units: int = 10  # fewer units in the window (line stopped or starting): no judgement
    gap_factor: float = 1.5
    gap_clear_s: float = 10.0


@dataclass
class CameraHealth:
    """One station camera: its last status and the state of its three conditions."""

    status: CameraStatus
    seen_ns: int  # when the alert service received the last status
    history: deque[tuple[int, int, int]] = field(default_factory=deque)  # (seen ns, frames, units)
    drift: float = 0.0  # |frames - units| / units over the window, last judged
    drift_since_ns: int | None = None  # condition true (or false while active) since
    drifting: bool = False
    gap_ratio: float = 0.0  # the last gap over its expected interval
    gap_at_ns: int = 0  # the last missed exposure (receipt time)
    gaps: int = 0  # missed exposures seen

    @property
    def key(self) -> str:
        return f"{self.status.station} ({self.status.camera})"


class CameraMonitor:
    """The cameras of one line."""

    def __init__(self, limits: CameraLimits | None = None) -> None:
        self.limits = limits or CameraLimits()
        self.cameras: dict[str, CameraHealth] = {}  # by station

    def observe(self, s: CameraStatus, now_ns: int) -> None:
        lim = self.limits
        if not s.running:  # the gateway stopped: nothing to expect from this camera (not lost)
            self.cameras.pop(s.station, None)
            return
        cam = self.cameras.get(s.station)
        if cam is None or cam.status.camera != s.camera:
            cam = self.cameras[s.station] = CameraHealth(s, now_ns)
        cam.status, cam.seen_ns = s, now_ns
        if s.expected_gap_ns > 0:
            cam.gap_ratio = s.ts_gap_ns / s.expected_gap_ns
            if cam.gap_ratio > lim.gap_factor:
                cam.gap_at_ns = now_ns
                cam.gaps += 1
        if not s.connected:  # camera_lost covers it; the rates start afresh when it is back
            cam.history.clear()
            cam.drift_since_ns, cam.drifting = None, False
            return
        cam.history.append((now_ns, s.frames, s.units))
        window = round(lim.rate_window_s * NS_PER_S)
        while len(cam.history) > 2 and cam.history[1][0] <= now_ns - window:
            cam.history.popleft()
        t0, f0, u0 = cam.history[0]
        units, frames = s.units - u0, s.frames - f0
        if now_ns - t0 < 0.8 * window or units < lim.rate_min_units:
            cam.drift_since_ns = None
            return
        cam.drift = abs(frames - units) / units
        wrong = cam.drift > lim.rate_tolerance
        if wrong != cam.drifting:  # a change must last rate_sustain_s
            cam.drift_since_ns = cam.drift_since_ns or now_ns
            if now_ns - cam.drift_since_ns >= lim.rate_sustain_s * NS_PER_S:
                cam.drifting, cam.drift_since_ns = wrong, None
        else:
            cam.drift_since_ns = None

    def lost(self, now_ns: int) -> list[str]:
        """The cameras lost now, each with why."""
        silent = self.limits.silent_s * NS_PER_S
        out = []
        for cam in self.cameras.values():
            age = now_ns - cam.seen_ns
            if age > silent:
                out.append(f"{cam.key}: no status from the gateway for {age / NS_PER_S:.1f} s")
            elif not cam.status.connected:
                out.append(f"{cam.key} disconnected")
        return out

    def drifting(self) -> list[str]:
        return [f"{c.key} {c.status.fps:.1f} frames/s for {c.status.units_per_s:.1f} units/s "
                f"({c.drift:.0%} off over {self.limits.rate_window_s:.0f} s)"
                for c in self.cameras.values() if c.drifting]

    def gapped(self, now_ns: int) -> list[str]:
        clear = self.limits.gap_clear_s * NS_PER_S
        return [f"{c.key}: camera timestamps {c.gap_ratio:.1f} unit intervals apart (missed exposure; "
                f"{c.gaps} so far)"
                for c in self.cameras.values() if c.gap_at_ns and now_ns - c.gap_at_ns < clear]

    def view(self, now_ns: int) -> list[dict[str, object]]:
        """The dashboard's camera panel rows, one per station camera."""
        rows: list[dict[str, object]] = []
        silent = self.limits.silent_s * NS_PER_S
        for c in self.cameras.values():  # in the gateway's station order (the line's)
            s = c.status
            rows.append({
                "station": s.station, "camera": s.camera,
                "connected": s.connected and now_ns - c.seen_ns <= silent,
                "fps": s.fps, "units_per_s": s.units_per_s, "frames": s.frames,
                "drops": s.incomplete + s.missing, "incomplete": s.incomplete, "missing": s.missing,
                "unexpected": s.unexpected, "reconnects": s.reconnects,
                "last_frame_age_s": (s.sent_ns - s.last_frame_ns) / NS_PER_S + (now_ns - c.seen_ns) / NS_PER_S
                if s.last_frame_ns else None,
                "status_age_s": (now_ns - c.seen_ns) / NS_PER_S,
                "gaps": c.gaps, "drift": c.drift if c.drifting else None,
            })
        return rows
