"""Camera health as the gateway sees it: one `CameraStatus` per station camera every
`STATUS_INTERVAL_S`, and at once when a camera is lost or back (the alert service raises
``camera_lost`` from it; docs/cameras.md, "Alerts and dashboard").

Besides the gateway's counters, two things only the gateway can measure are measured here:
the frame rate against the line's unit rate, and the interval between consecutive camera
timestamps against the unit interval. The unit interval is taken in encoder counts (the median
spacing of recent trigger latches, one unit pitch) and turned into time over the same two
exposures, so a line that slows down or stops between two frames is not a missed exposure.

Called from the gateway's event loop only (`Gateway.step`), like the tracker.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pipeline.core.times import NS_PER_S
from pipeline.gateway.cameras import AcquiredFrame
from pipeline.gateway.tracking import StationStats, TrackerStats
from pipeline.gateway.triggers import CameraClock, EncoderClock, Trigger
from pipeline.wire.messages import CameraStatus

STATUS_INTERVAL_S = 0.25  # the dashboard's refresh is 1 s; the alert service's silence limit is 1 s
RATE_WINDOW_S = 1.0  # fps and units/s shown: over the last second (a 0.25 s count is too coarse)
PITCH_TRIGGERS = 16  # trigger spacings the unit pitch is the median of


class CameraCounters(Protocol):
    """What the gateway counts per station camera (`pipeline.gateway.service.CameraSide`)."""

    frames: int
    reconnects: int
    connected: bool
    last_frame_ns: int


class StationView(Protocol):
    """A station camera as this module needs it (`pipeline.gateway.service.StationCamera`)."""

    station: str
    serial: str
    clock: CameraClock


@dataclass
class _Camera:
    station: str
    serial: str
    clock: CameraClock
    samples: deque[tuple[int, int, int]]  # (host ns, frames, units) for the rates
    connected: bool | None = None  # as last published
    sent_ns: int = 0
    prev_ts_ns: int = 0  # camera timestamp of the previous frame
    prev_position: int | None = None  # its encoder position
    gap_ns: int = 0  # largest camera timestamp gap (relative to its expected one) since the last status
    expected_ns: int = 0


class CameraStatusReporter:
    """Builds the `CameraStatus` of every station camera and hands each to `send`."""

    def __init__(self, line: str, stations: Iterable[StationView], encoder: EncoderClock,
                 send: Callable[[CameraStatus], None], interval_s: float = STATUS_INTERVAL_S) -> None:
        self._line = line
        self._encoder = encoder
        self._send = send
        self._interval_ns = round(interval_s * NS_PER_S)
        self._cameras = {s.station: _Camera(s.station, s.serial, s.clock, deque()) for s in stations}
        self._trigger_positions: deque[int] = deque(maxlen=PITCH_TRIGGERS + 1)

    def on_trigger(self, trigger: Trigger) -> None:
        self._trigger_positions.append(trigger.position)

    def pitch_counts(self) -> float | None:
        """One unit pitch in encoder counts: the median spacing of the last triggers."""
        p = list(self._trigger_positions)
        spacings = [b - a for a, b in zip(p, p[1:], strict=False) if b > a]
        return statistics.median(spacings) if spacings else None

    def on_frame(self, station: str, frame: AcquiredFrame) -> None:
        """Measure the camera timestamp gap to the previous frame of this station."""
        cam = self._cameras[station]
        if not frame.camera_ts_ns:
            return
        host_ns = cam.clock.host_ns(frame.camera_ts_ns) if cam.clock.ready else frame.system_ts_ns
        position = self._encoder.position_at(host_ns)
        prev_ts, prev_pos = cam.prev_ts_ns, cam.prev_position
        cam.prev_ts_ns, cam.prev_position = frame.camera_ts_ns, position
        if not prev_ts or frame.camera_ts_ns <= prev_ts:  # first frame, or a camera clock reset
            return
        gap = frame.camera_ts_ns - prev_ts
        pitch = self.pitch_counts()
        expected = 0
        if pitch and position is not None and prev_pos is not None and position > prev_pos:
            expected = round(gap * pitch / (position - prev_pos))  # the time one pitch took then
        worse = (gap / expected if expected else 0.0) > (cam.gap_ns / cam.expected_ns if cam.expected_ns else 0.0)
        if worse or not cam.gap_ns:
            cam.gap_ns, cam.expected_ns = gap, expected

    def on_reconnect(self, station: str) -> None:
        """A power-cycled camera starts its clock afresh: no gap across the outage."""
        cam = self._cameras[station]
        cam.prev_ts_ns, cam.prev_position = 0, None

    def publish_due(self, now_ns: int, counters: Mapping[str, CameraCounters], tracking: TrackerStats,
                    units: int, connected: Mapping[str, bool] | None = None) -> list[CameraStatus]:
        """Send the status of every camera whose interval is up or whose connection changed.

        `connected` overrides the counters' flag (the camera layer notices a loss before the
        reader thread does)."""
        sent = []
        for station, cam in self._cameras.items():
            c = counters[station]
            up = c.connected and (connected or {}).get(station, True)
            if cam.connected is not None and up == cam.connected and now_ns - cam.sent_ns < self._interval_ns:
                continue
            if cam.connected is False and up:
                self.on_reconnect(station)
            fps, units_per_s = self._rates(cam, now_ns, c.frames, units)
            t = tracking.stations.get(station, StationStats())
            status = CameraStatus(
                line=self._line, station=station, camera=cam.serial, connected=up, frames=c.frames, units=units,
                fps=fps, units_per_s=units_per_s, incomplete=t.incomplete, missing=t.missing,
                unexpected=t.unexpected, reconnects=c.reconnects, last_frame_ns=c.last_frame_ns,
                ts_gap_ns=cam.gap_ns, expected_gap_ns=cam.expected_ns, sent_ns=now_ns,
            )
            cam.connected, cam.sent_ns, cam.gap_ns, cam.expected_ns = up, now_ns, 0, 0
            self._send(status)
            sent.append(status)
        return sent

    def publish_final(self, now_ns: int, counters: Mapping[str, CameraCounters], tracking: TrackerStats,
                      units: int) -> None:
        """The gateway stops: a last status of every camera with ``running=False``, so that the
        alert service stops expecting statuses instead of calling the cameras lost."""
        for station, cam in self._cameras.items():
            c = counters[station]
            t = tracking.stations.get(station, StationStats())
            self._send(CameraStatus(
                line=self._line, station=station, camera=cam.serial, connected=c.connected, frames=c.frames,
                units=units, fps=0.0, units_per_s=0.0, incomplete=t.incomplete, missing=t.missing,
                unexpected=t.unexpected, reconnects=c.reconnects, last_frame_ns=c.last_frame_ns,
                ts_gap_ns=0, expected_gap_ns=0, sent_ns=now_ns, running=False,
            ))

    @staticmethod
    def _rates(cam: _Camera, now_ns: int, frames: int, units: int) -> tuple[float, float]:
        cam.samples.append((now_ns, frames, units))
        window = round(RATE_WINDOW_S * NS_PER_S)
        while len(cam.samples) > 2 and cam.samples[1][0] <= now_ns - window:
            cam.samples.popleft()
        t0, f0, u0 = cam.samples[0]
        span_s = (now_ns - t0) / NS_PER_S
        if span_s <= 0:
            return 0.0, 0.0
        return (frames - f0) / span_s, (units - u0) / span_s
