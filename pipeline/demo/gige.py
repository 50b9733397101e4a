"""`linesight demo --cameras gige` (`make demo CAMERAS=gige`): the demo line seen by GigE Vision cameras.

A two-station tablet line, each unit photographed on both faces (recipe
``tablet-round-white-10mm-2faces``: station ``top`` and station ``bottom`` both run the tablet
classifier). The embedded PLC simulator runs the conveyor: its encoder and the infeed trigger
latches give each unit its id and position. One fake GigE Vision camera per station (real GVCP
and GVSP on a loopback address, `pipeline.gateway.fake_cameras`) shows the face of the unit the
simulator rendered for it; the camera gateway (`pipeline.gateway.service`) triggers each camera
as a unit reaches its station, matches every frame to its unit by encoder position and publishes
it; workers judge each face, and the actuator releases a unit only when both faces passed.

A unit's two faces are rendered independently (each defective at half the line's defect rate),
so a defect shows on one face only: the station that sees it must reject the unit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np

from pipeline.analytics.run_report import RunReport, build_report
from pipeline.demo.run import audit_line, pipeline_stack, wait_drained
from pipeline.gateway.fake_cameras import FakeGigECamera
from pipeline.gateway.publisher import FramePublisher, new_lot
from pipeline.gateway.service import Gateway, GatewayStats, station_cameras
from pipeline.gateway.tracking import TrackedUnit
from pipeline.gateway.triggers import PlcLineSignals
from pipeline.imaging.catalog import sample_product
from pipeline.recipes.schema import Recipe, load_recipe
from pipeline.settings import Settings
from pipeline.settings.actuation import StationSettings
from pipeline.wire.messages import GroundTruth

log = logging.getLogger(__name__)

RECIPE = "tablet-round-white-10mm-2faces"
# (station, camera serial, offset from the trigger point in mm)
STATIONS = (("top", "LSDEMO-TOP-01", 50.0), ("bottom", "LSDEMO-BOT-01", 150.0))
PITCH_MM = 25.0  # belt between two units entering
COUNTS_PER_MM = 10.0
TOLERANCE_MM = 10.0  # a frame may be this far from its unit's expected position (< half the pitch)


def gige_settings(settings: Settings) -> Settings:
    """The demo line as a two-station line: encoder, stations, belt speed from the unit rate."""
    sim = settings.simulator
    speed = sim.rate_per_s * PITCH_MM
    timing = settings.lines.get(sim.line)
    if timing is None:
        raise ValueError(f"line {sim.line!r} has no timing settings (lines.{sim.line})")
    # The gate stays as many seconds downstream as on the one-camera demo line.
    travel_s = timing.camera_to_gate_mm / timing.conveyor_speed_mm_s
    line = timing.model_copy(update={
        "conveyor_speed_mm_s": speed,
        "counts_per_mm": COUNTS_PER_MM,
        "camera_to_gate_mm": max(travel_s * speed, STATIONS[-1][2] + 4 * PITCH_MM),
        "stations": [StationSettings(name=n, camera=serial, offset_mm=off) for n, serial, off in STATIONS],
    })
    stream = settings.stream.model_copy(update={"line_recipes": settings.stream.line_recipes | {sim.line: RECIPE}})
    return settings.model_copy(update={"lines": settings.lines | {sim.line: line}, "stream": stream})


@dataclass(frozen=True)
class TwoFacedUnit:
    faces: dict[str, np.ndarray]  # station -> RGB image of that face
    defect: str | None
    defect_station: str | None


class RenderedLine:
    """The units the line makes, rendered on demand and the same for every station's camera."""

    def __init__(self, settings: Settings, lot: str) -> None:
        self._sim = settings.simulator
        self._lot = lot
        self._today = datetime.now(UTC).date()
        self._lock = threading.Lock()

    @lru_cache(maxsize=256)  # noqa: B019 - one renderer per demo run
    def unit(self, seq: int) -> TwoFacedUnit:
        with self._lock:
            rng = np.random.default_rng((self._sim.seed, seq))
            faces, defect, where = {}, None, None
            for station, _serial, _off in STATIONS:
                made = sample_product(rng, self._sim.product, self._sim.defect_rate / 2, self._lot, seq, self._today)
                faces[station] = np.asarray(made.image.convert("RGB"))
                if made.defect and defect is None:
                    defect, where = made.defect, station
            return TwoFacedUnit(faces, defect, where)

    def source(self, station: str) -> Callable[[int], np.ndarray]:
        """The station camera's n-th frame: the n-th unit's face (one software trigger per unit)."""
        return lambda n: self.unit(n).faces[station]

    def truth(self, line: str, unit: TrackedUnit) -> GroundTruth:
        made = self.unit(unit.seq)
        return GroundTruth(
            unit.unit_id, line, unit.lot, self._sim.product, "defect" if made.defect else "good",
            made.defect or "none", unit.trigger_ns,
            source=f"simulator:gige:{made.defect_station}" if made.defect else "simulator:gige",
        )


def fake_cameras(line: RenderedLine, size: int) -> list[FakeGigECamera]:
    return [FakeGigECamera(serial, size, size, line.source(station), pixel_format="RGB8")
            for station, serial, _off in STATIONS]


def run_gateway(settings: Settings, recipe: Recipe, lot: str, publisher: FramePublisher,
                line: RenderedLine, stop: threading.Event) -> tuple[GatewayStats, Gateway]:
    """The camera gateway of the demo line until `stop` (then drained)."""
    sim = settings.simulator
    timing = settings.lines[sim.line]
    assert timing.counts_per_mm is not None
    gateway = Gateway(
        settings, sim.line, recipe, lot, publisher, PlcLineSignals(settings.plc), station_cameras(settings, sim.line, recipe),
        tolerance_counts=round(TOLERANCE_MM * timing.counts_per_mm),
        on_unit=lambda unit: publisher.truth(line.truth(sim.line, unit)),
    )
    gateway.open()
    return asyncio.run(gateway.run(stop)), gateway


def run_gige_demo(settings: Settings, duration_s: float, workers: int = 1) -> RunReport:
    settings = gige_settings(settings)
    with pipeline_stack(settings, workers) as (resolved, client, services):
        recipe = load_recipe(resolved.stream.recipes_dir / f"{RECIPE}.toml", resolved.triton.model_repository)
        lot = new_lot(resolved.simulator.line)
        line = RenderedLine(resolved, lot)
        cameras = fake_cameras(line, resolved.simulator.image_size)
        for camera in cameras:
            camera.start()
        publisher = FramePublisher(resolved)
        stop = threading.Event()
        timer = threading.Timer(duration_s, stop.set)
        try:
            audit_line(resolved, client, "line.start", "linesight demo --cameras gige",
                       rate_per_s=resolved.simulator.rate_per_s, stations=[s[0] for s in STATIONS])
            timer.start()
            stats, gateway = run_gateway(resolved, recipe, lot, publisher, line, stop)
        finally:
            timer.cancel()
            publisher.close()
            for camera in cameras:
                camera.stop()
        audit_line(resolved, client, "line.stop", "linesight demo --cameras gige: run finished", lot=lot,
                   units=stats.units, failsafe_rejects=stats.failsafe_rejects)
        log.info("gateway: %d units, per station %s", stats.units, gateway.tracking.stations)
        wait_drained(client, resolved.clickhouse.database, lot, stats.units, services.stop_event)
        return build_report(client, resolved.clickhouse.database, lot, positive_release=resolved.plc.positive_release)
