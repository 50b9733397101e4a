"""The camera gateway (`linesight gateway`): a line's GenICam cameras -> one frame per unit and station.

Unit identity comes from the line, never from a camera (docs/cameras.md): the PLC latches the
encoder count of every unit at the line's trigger point (`LineSignals`), which gives the unit
its id and position. Each station's camera sees the unit `offset` counts further on; a frame's
camera timestamp is mapped to host time (`CameraClock`), then to an encoder position
(`EncoderClock`), then to the unit expected there (`UnitTracker`). Cameras whose recipe trigger
source is ``Software`` are triggered by the gateway when a unit reaches their station; cameras
on a hardware line (``Line0``...) trigger themselves.

Nothing uninspected passes: an incomplete frame, or a unit that left a station's window with no
frame, gets a fail-safe `RejectCommand` naming the station (the actuator rejects the unit), and a
frame no unit expected is dead-lettered with its reason. All of it is counted per station.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.core.times import NS_PER_MS, now_ns
from pipeline.gateway.camera_status import CameraStatusReporter
from pipeline.gateway.cameras import AcquiredFrame, CameraConfigError, CameraError, GenICamCamera
from pipeline.gateway.pixels import encode_frame
from pipeline.gateway.publisher import FramePublisher
from pipeline.gateway.tracking import StationMiss, TrackedUnit, TrackerStats, UnitTracker
from pipeline.gateway.triggers import CameraClock, EncoderClock, Trigger
from pipeline.recipes.schema import CameraFeatures, Recipe
from pipeline.settings import Settings
from pipeline.wire.messages import FrameMeta, RejectCommand

log = logging.getLogger(__name__)


class GatewayConfigError(ValueError):
    """The gateway cannot start: every reason (a missing camera, a feature it lacks) at once."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("camera gateway refused to start: " + "; ".join(self.problems))


class LineSignals(Protocol):
    """Where units and the encoder come from (`PlcLineSignals`: the PLC, in production and in the
    embedded stack). Runs in the gateway's event loop, which is the only reader of `clock`."""

    clock: EncoderClock

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def drain(self) -> list[Trigger]:
        """Triggers latched since the last call, in order."""
        ...


# Past any unit's window at any station: `UnitTracker.due` then reports every unit still awaited.
_BEYOND_EVERY_WINDOW = 2**62


@dataclass
class CameraSide:
    """What one station's camera did (the unit matching is counted by the tracker)."""

    frames: int = 0
    published: int = 0
    software_triggers: int = 0
    reconnects: int = 0
    connected: bool = False
    last_frame_ns: int = 0


@dataclass
class GatewayStats:
    units: int = 0  # triggers given a unit id
    failsafe_rejects: int = 0
    ignored_triggers: int = 0  # after stop: no id, not this run's units
    stations: dict[str, CameraSide] = field(default_factory=dict)


@dataclass
class StationCamera:
    """One station: its camera, the recipe's features for it, and where it sees the unit."""

    station: str
    serial: str
    offset_counts: int
    features: CameraFeatures
    camera: GenICamCamera
    clock: CameraClock = field(default_factory=CameraClock)

    @property
    def software_triggered(self) -> bool:
        return self.features.trigger_source == "Software"


CameraFactory = Callable[[str, CameraFeatures], GenICamCamera]


def station_cameras(
    settings: Settings, line: str, recipe: Recipe, factory: CameraFactory = GenICamCamera
) -> list[StationCamera]:
    """The line's declared stations with the recipe's camera features; refuses a mismatch."""
    timing = settings.lines.get(line)
    if timing is None or not timing.stations:
        raise GatewayConfigError([f"line {line!r} declares no stations (lines.{line}.stations)"])
    if not settings.plc.positive_release:
        # The gateway is not watched by the actuator: if it dies, units reach the gate unheard of.
        raise GatewayConfigError([
            f"line {line!r}: a multi-station line needs a positive-release gate (plc.gate_mode = release); "
            "with gate_mode = reject a unit the gateway never saw would pass"
        ])
    if timing.counts_per_mm is None:
        raise GatewayConfigError(
            [f"line {line!r}: stations are matched by encoder position; set lines.{line}.counts_per_mm"]
        )
    problems = [
        f"recipe {recipe.ref} has no [[station]] {s.name!r} that line {line!r} declares"
        for s in timing.stations
        if recipe.station(s.name) is None
    ]
    problems += [
        f"recipe {recipe.ref} station {s.name!r} is not a station of line {line!r}"
        for s in recipe.stations
        if timing.station(s.name) is None
    ]
    if problems:
        raise GatewayConfigError(problems)
    out = []
    for s in timing.stations:
        spec = recipe.station(s.name)
        assert spec is not None  # checked above
        out.append(
            StationCamera(
                s.name, s.camera, round(s.offset_mm * timing.counts_per_mm), spec.camera, factory(s.camera, spec.camera)
            )
        )
    return out


class Gateway:
    """Acquires from every station camera of one line and publishes frames matched to units."""

    def __init__(
        self,
        settings: Settings,
        line: str,
        recipe: Recipe,
        lot: str,
        publisher: FramePublisher,
        signals: LineSignals,
        stations: list[StationCamera],
        tolerance_counts: int,
        frame_latency_ms: float = 100.0,
        on_unit: Callable[[TrackedUnit], None] | None = None,
    ) -> None:
        self._line, self._recipe, self._lot = line, recipe, lot
        self._publisher = publisher
        self._signals = signals
        self._stations = {s.station: s for s in stations}
        self._tracker = UnitTracker(line, lot, {s.station: s.offset_counts for s in stations}, tolerance_counts)
        self._encoder = signals.clock
        # Frames still in flight when a unit leaves a station's window: judge the window this late.
        self._latency_ns = round(frame_latency_ms * NS_PER_MS)
        # (station, frame, its encoded bytes and content type: None when the frame is not usable)
        self._frames: queue.Queue[tuple[str, AcquiredFrame, tuple[bytes, str] | None]] = queue.Queue(maxsize=1024)
        self._due_triggers: list[tuple[int, str]] = []  # (encoder position, station) to fire at
        self.stats = GatewayStats(stations={s.station: CameraSide() for s in stations})
        self._threads: list[threading.Thread] = []
        # Software triggers go out from a thread per station: a trigger to a camera that stopped
        # answering blocks in Aravis's GVCP retries (5 x 500 ms), which must stall neither this
        # event loop (line signals, frames, the other stations' triggers) nor another station.
        self._triggerers = {
            s.station: ThreadPoolExecutor(1, thread_name_prefix=f"trigger-{s.station}") for s in stations
        }
        self._on_unit = on_unit  # told of every unit as it gets its id (the demo's ground truth)
        # Camera health for the alert service and the dashboard (docs/cameras.md).
        self.camera_status = CameraStatusReporter(line, stations, self._encoder, publisher.status)

    def open(self) -> None:
        """Open every camera and apply the recipe's features; refuse with every problem at once."""
        problems = []
        for s in self._stations.values():
            try:
                s.camera.open()
            except CameraConfigError as exc:
                problems.append(f"station {s.station} camera {s.serial}: {exc}")
            except CameraError as exc:
                problems.append(f"station {s.station} camera {s.serial}: {exc}")
        if problems:
            self.close()
            raise GatewayConfigError(problems)

    async def run(self, stop: threading.Event, poll_s: float = 0.002, drain_s: float = 10.0) -> GatewayStats:
        """Acquire and publish until `stop`, then drain: units already given an id are followed
        past every station (at most `drain_s`), and any still awaited then is fail-safe rejected;
        triggers after `stop` get no id (their units are not this run's). Each camera is read by
        a thread of its own; the line signals, the tracker and publishing run in this event loop
        (one owner for each clock)."""
        await self._signals.start()
        halt = threading.Event()  # the camera readers run through the drain
        for s in self._stations.values():
            s.camera.start()
            self.stats.stations[s.station].connected = True
            t = threading.Thread(target=self._read, args=(s, halt), name=f"camera-{s.station}", daemon=True)
            t.start()
            self._threads.append(t)
        try:
            while not stop.is_set():
                self.step()
                await asyncio.sleep(poll_s)
            deadline = now_ns() + round(drain_s * 1e9)
            while self._tracker.stats.in_flight and now_ns() < deadline:
                self.step(new_units=False)
                await asyncio.sleep(poll_s)
            for miss in self._tracker.due(_BEYOND_EVERY_WINDOW):
                self._failsafe(miss, f"{miss.reason} (gateway stopped)")
        finally:
            for triggerer in self._triggerers.values():
                await asyncio.to_thread(triggerer.shutdown, True, cancel_futures=True)
            halt.set()
            await self._signals.stop()
            for t in self._threads:
                await asyncio.to_thread(t.join, 2.0)
            self.close()
            # Cameras no longer watched by design, not lost: the alert service stops expecting them.
            self.camera_status.publish_final(now_ns(), self.stats.stations, self._tracker.stats, self.stats.units)
        return self.stats

    def step(self, new_units: bool = True) -> None:
        """One round: new units, software triggers due, frames, stations missed."""
        for trigger in self._signals.drain():
            if not new_units:
                self.stats.ignored_triggers += 1
                continue
            unit = self._tracker.on_trigger(trigger.position, trigger.trigger_ns)
            self.stats.units += 1
            self.camera_status.on_trigger(trigger)
            if self._on_unit is not None:
                self._on_unit(unit)
            self._due_triggers += [
                (unit.position + s.offset_counts, s.station) for s in self._stations.values() if s.software_triggered
            ]
        self._fire_software_triggers()
        while True:
            try:
                station, frame, encoded = self._frames.get_nowait()
            except queue.Empty:
                break
            self._on_frame(self._stations[station], frame, encoded)
            self.camera_status.on_frame(station, frame)
        judged_to = self._encoder.position_at(now_ns() - self._latency_ns)
        if judged_to is not None:
            for miss in self._tracker.due(judged_to):
                self._failsafe(miss)
        self.camera_status.publish_due(now_ns(), self.stats.stations, self._tracker.stats, self.stats.units,
                                       {name: s.camera.connected for name, s in self._stations.items()})

    @property
    def tracking(self) -> TrackerStats:
        """Per station: frames matched to units, unexpected, duplicate, late, missing, incomplete."""
        return self._tracker.stats

    def close(self) -> None:
        for s in self._stations.values():
            try:
                s.camera.stop()
            except CameraError:
                pass
            s.camera.close()

    # -- internals ----------------------------------------------------------------------------

    def _read(self, s: StationCamera, stop: threading.Event) -> None:
        """One camera's frames into the queue; a lost camera is reopened until it answers again."""
        stats = self.stats.stations[s.station]
        backoff = 0.1
        while not stop.is_set():
            try:
                frame = s.camera.next_frame(0.1)
            except CameraError as exc:
                # Only the message outlives this block: the exception's traceback holds the lost
                # camera's stream, and whoever drops it last releases it (Aravis writes to the gone
                # camera, 5 x 500 ms a write). That is `close()`'s release thread, not this reader
                # after a reopen (measured: 5 s with no frame read from the camera that came back).
                if stats.connected:
                    log.error("station %s camera %s lost: %s", s.station, s.serial, str(exc))
                stats.connected = False
                frame = None
            if not stats.connected:
                if stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 2.0)
                try:
                    s.camera.close()
                    s.camera.open()
                    s.camera.start()
                except (CameraError, CameraConfigError) as again:
                    log.debug("station %s camera %s not back yet: %s", s.station, s.serial, again)
                    continue
                stats.connected, backoff = True, 0.1
                stats.reconnects += 1
                log.warning("station %s camera %s reconnected", s.station, s.serial)
                continue
            if frame is not None:
                # Encoded here, on the camera's own thread: PNG/JPEG encoding releases the GIL, so the
                # stations encode in parallel and the event loop (triggers, matching) never waits on it.
                encoded = encode_frame(frame.image, s.features) if frame.complete and frame.image is not None else None
                self._frames.put((s.station, frame, encoded))

    def _fire_software_triggers(self) -> None:
        if not self._due_triggers:
            return
        now = self._encoder.position_at(now_ns())
        if now is None:
            return
        keep = []
        for position, station in self._due_triggers:
            if position > now:
                keep.append((position, station))
                continue
            self._triggerers[station].submit(self._software_trigger, self._stations[station], now_ns())
        self._due_triggers = keep

    def _software_trigger(self, s: StationCamera, due_ns: int) -> None:
        """On the station's trigger thread. A trigger that waited there longer than frames may
        take (behind one to a camera that stopped answering) is dropped: fired now, its frame would
        show whatever is at the station by then; the tracker misses the unit instead."""
        waited_ns = now_ns() - due_ns
        if waited_ns > self._latency_ns:
            log.warning("station %s: software trigger dropped, %.0f ms late", s.station, waited_ns / NS_PER_MS)
            return
        if not self.stats.stations[s.station].connected:
            # Lost, or being opened again: a trigger now would be latched by the camera and fired
            # when its acquisition restarts, a frame of no unit's.
            log.debug("station %s: camera not acquiring, no software trigger", s.station)
            return
        try:
            s.camera.software_trigger()
            self.stats.stations[s.station].software_triggers += 1
        except CameraError as exc:  # no frame will come: the tracker misses the unit
            log.warning("station %s: software trigger failed: %s", s.station, exc)

    def _on_frame(self, s: StationCamera, frame: AcquiredFrame, encoded: tuple[bytes, str] | None) -> None:
        stats = self.stats.stations[s.station]
        stats.frames += 1
        stats.last_frame_ns = frame.system_ts_ns
        if frame.complete and frame.camera_ts_ns:
            s.clock.observe(frame.camera_ts_ns, frame.system_ts_ns)
        host_ns = s.clock.host_ns(frame.camera_ts_ns) if frame.camera_ts_ns and s.clock.ready else frame.system_ts_ns
        position = self._encoder.position_at(host_ns)
        if position is None:  # no encoder around that time (PLC link lost): whose frame is unknown
            reason = f"station {s.station}: frame {frame.frame_id} at a time with no encoder reading"
            if encoded is not None:
                image, content_type = encoded
                meta = FrameMeta(f"{self._line}-unplaced-{s.station}-{frame.frame_id}", self._line, s.serial,
                                 self._recipe.product, host_ns, content_type, self._lot,
                                 station=s.station, frame_id=frame.frame_id, camera_ts_ns=frame.camera_ts_ns)
                self._publisher.dead_letter(meta, image, reason, stage="gateway")
            else:
                log.warning("%s (incomplete: %s)", reason, frame.status)
            return
        if not frame.complete or frame.image is None or encoded is None:
            miss = self._tracker.on_bad_frame(s.station, position, f"frame {frame.frame_id} {frame.status}")
            if miss is not None:
                self._failsafe(miss)
            return
        unit = self._tracker.on_frame(s.station, position)
        image, content_type = encoded
        meta = FrameMeta(
            unit.unit_id if unit is not None else f"{self._line}-unexpected-{s.station}-{frame.frame_id}",
            self._line,
            s.serial,
            self._recipe.product,
            host_ns,
            content_type,
            self._lot,
            position,
            station=s.station,
            frame_id=frame.frame_id,
            camera_ts_ns=frame.camera_ts_ns,
        )
        if unit is None:
            self._publisher.dead_letter(
                meta,
                image,
                f"station {s.station}: frame {frame.frame_id} at encoder {position} matches no unit",
                stage="gateway",
            )
            return
        if self._publisher.publish(meta, image):
            stats.published += 1
        else:  # over the broker's size limit: the unit is not inspected at this station
            self._failsafe(
                StationMiss(unit, s.station, f"station {s.station}: frame {frame.frame_id} refused (too large)")
            )

    def _failsafe(self, miss: StationMiss, reason: str = "") -> None:
        unit: TrackedUnit = miss.unit
        self.stats.failsafe_rejects += 1
        self._publisher.reject(
            RejectCommand(
                unit_id=unit.unit_id,
                line=self._line,
                camera=self._stations[miss.station].serial,
                lot=unit.lot,
                cause="failsafe",
                defect="uninspected",
                capture_ns=unit.trigger_ns,
                issued_ns=now_ns(),
                reason=(reason or miss.reason)[:1000],
            )
        )
