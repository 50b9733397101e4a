"""The camera gateway (`pipeline.gateway.service.Gateway`) against fake GigE Vision cameras on the
loopback (real GVCP/GVSP through Aravis) and the in-process simulated PLC running the line (its
encoder and infeed trigger ring read over OPC UA by `PlcLineSignals`). Only the Kafka producer is
replaced: a recording publisher keeps what the gateway published, rejected and dead-lettered.

No fixed sleeps: conditions are probed until a deadline. Needs the `gige` extra.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import numpy as np
import pytest
import pytest_asyncio
from support import eventually_async, fast_plc

from pipeline.actuation.plc.simulator import PlcSimulator, UnitPassage
from pipeline.embedded.process import free_port
from pipeline.gateway.cameras import load_aravis
from pipeline.gateway.fake_cameras import FakeGigECamera
from pipeline.gateway.publisher import FramePublisher
from pipeline.gateway.service import Gateway, GatewayConfigError, GatewayStats, StationCamera, station_cameras
from pipeline.gateway.tracking import TrackedUnit
from pipeline.gateway.triggers import PlcLineSignals
from pipeline.recipes.schema import CameraFeatures, Recipe, load_recipe
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.settings.actuation import LineTimingSettings, StationSettings
from pipeline.wire.codec import decode_rgb
from pipeline.wire.messages import FrameMeta, GroundTruth, RejectCommand

LINE = "gw-line"
LOT = "GWLOT"
CPM = 10.0  # encoder counts per mm
PITCH_MM = 25.0
SPEED_MM_S = 100.0  # 4 units/s
TOLERANCE_MM = 10.0
OFFSETS_MM = {"top": 50.0, "bottom": 100.0}
TOLERANCE = round(TOLERANCE_MM * CPM)
W, H = 64, 48
RECIPE = load_recipe(PROJECT_ROOT / "recipes" / "tablet-round-white-10mm-2faces.toml")  # top, bottom: RGB8, Software

eventually = partial(eventually_async, timeout_s=30.0, poll_s=0.01)

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

_serials = itertools.count(1)


@pytest.fixture(scope="module", autouse=True)
def _aravis() -> None:
    load_aravis()  # CameraError naming the `gige` extra when it is missing


def serial(station: str) -> str:
    """Unique on the machine (another process's fake cameras must not answer for ours) and short:
    a GigE Vision serial number has at most 15 characters."""
    return f"G{os.getpid()}{station[0]}{next(_serials)}"


def face(station: str, n: int) -> np.ndarray:
    """The n-th image a station's fake camera serves (distinct per station and frame)."""
    return np.random.default_rng((list(OFFSETS_MM).index(station), n)).integers(0, 256, (H, W, 3), dtype=np.uint8)


def line_settings(serials: dict[str, str], stations: bool = True, counts_per_mm: float | None = CPM) -> Settings:
    timing = LineTimingSettings(
        conveyor_speed_mm_s=SPEED_MM_S, camera_to_gate_mm=300.0, counts_per_mm=counts_per_mm,
        stations=[StationSettings(name=n, camera=serials[n], offset_mm=mm) for n, mm in OFFSETS_MM.items()]
        if stations else [],
    )
    return Settings().model_copy(update={"lines": {LINE: timing}})


def with_cameras(**features: CameraFeatures) -> Recipe:
    """The two-face recipe with some stations' camera features replaced."""
    stations = [s.model_copy(update={"camera": features.get(s.name, s.camera)}) for s in RECIPE.stations]
    return Recipe(RECIPE.doc.model_copy(update={"station": stations}), RECIPE.params)


@dataclass
class Published:
    meta: FrameMeta
    image: bytes
    at_ns: int  # host time the gateway published it


@dataclass
class RecordingPublisher:
    """Stands in for the Kafka producer side of `FramePublisher`: records every call."""

    frames: list[Published] = field(default_factory=list)
    rejects: list[RejectCommand] = field(default_factory=list)
    dead: list[tuple[FrameMeta, bytes, str, str]] = field(default_factory=list)
    truths: list[GroundTruth] = field(default_factory=list)
    statuses: list[object] = field(default_factory=list)  # camera health reports, where the gateway makes them

    def publish(self, meta: FrameMeta, image: bytes, truth: GroundTruth | None = None) -> bool:
        self.frames.append(Published(meta, image, time.time_ns()))
        if truth is not None:
            self.truth(truth)
        return True

    def truth(self, truth: GroundTruth) -> None:
        self.truths.append(truth)

    def reject(self, command: RejectCommand) -> None:
        self.rejects.append(command)

    def dead_letter(self, meta: FrameMeta, image: bytes, reason: str, stage: str) -> None:
        self.dead.append((meta, image, reason, stage))

    def status(self, status: object) -> None:
        self.statuses.append(status)

    def published(self, station: str) -> dict[str, Published]:
        """Frames published from a station, by unit id (a second frame for a unit would be a bug)."""
        out: dict[str, Published] = {}
        for p in self.frames:
            if p.meta.station == station:
                assert p.meta.unit_id not in out, f"unit {p.meta.unit_id} published twice from {station}"
                out[p.meta.unit_id] = p
        return out

    def rejected(self, station: str) -> dict[str, RejectCommand]:
        return {r.unit_id: r for r in self.rejects if r.reason.startswith(f"station {station}:")}

    def settled(self, station: str, units: int) -> bool:
        """Every unit so far is published or fail-safe rejected at `station`."""
        return len(self.published(station)) + len(self.rejected(station)) >= units


@dataclass
class Run:
    plc: PlcSimulator
    fakes: dict[str, FakeGigECamera]
    served: dict[str, list[tuple[int, int]]]  # station -> (frame n, host ns the fake rendered it)
    stations: list[StationCamera]
    signals: PlcLineSignals
    gateway: Gateway
    rec: RecordingPublisher
    units: list[TrackedUnit]
    stop: threading.Event
    task: asyncio.Task[GatewayStats]

    async def finish(self) -> GatewayStats:
        """Stop the gateway (it drains the units in flight) and wait for it."""
        self.stop.set()
        return await asyncio.wait_for(self.task, 30)

    def serial(self, station: str) -> str:
        return self.fakes[station].serial


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_plc() -> AsyncIterator[PlcSimulator]:
    async with PlcSimulator(free_port(), heartbeat_interval_s=0.05, trigger_ring=64, encoder_start=5_000) as plc:
        yield plc


@pytest_asyncio.fixture(loop_scope="module")
async def plc(shared_plc: PlcSimulator) -> AsyncIterator[PlcSimulator]:
    await shared_plc.reset_faults()
    yield shared_plc
    await shared_plc.stop_line()


@asynccontextmanager
async def gateway_on_line(plc: PlcSimulator, recipe: Recipe = RECIPE) -> AsyncIterator[Run]:
    """Fake cameras for both stations, the gateway opened and running with the PLC's line signals
    (connected before the line runs: triggers latched earlier are not the run's)."""
    serials = {name: serial(name) for name in OFFSETS_MM}
    served: dict[str, list[tuple[int, int]]] = {name: [] for name in OFFSETS_MM}

    def source(station: str) -> Callable[[int], np.ndarray]:
        def render(n: int) -> np.ndarray:
            served[station].append((n, time.time_ns()))
            return face(station, n)
        return render

    fakes = {name: FakeGigECamera(sn, W, H, source(name), pixel_format="RGB8") for name, sn in serials.items()}
    rec = RecordingPublisher()
    units: list[TrackedUnit] = []
    stop = threading.Event()
    task: asyncio.Task[GatewayStats] | None = None
    try:
        for fake in fakes.values():
            fake.start()
        stations = station_cameras(line_settings(serials), LINE, recipe)
        signals = PlcLineSignals(fast_plc(plc.endpoint), poll_s=0.005)
        gateway = Gateway(line_settings(serials), LINE, recipe, LOT, cast(FramePublisher, rec), signals, stations,
                          tolerance_counts=TOLERANCE, on_unit=units.append)
        await asyncio.to_thread(gateway.open)
        task = asyncio.get_running_loop().create_task(gateway.run(stop))
        assert await signals.wait_connected(15), signals.state_reason
        yield Run(plc, fakes, served, stations, signals, gateway, rec, units, stop, task)
    finally:
        stop.set()
        if task is not None and not task.done():
            await asyncio.wait_for(task, 30)
        for fake in fakes.values():
            fake.stop()


async def run_units(plc: PlcSimulator, units: int | None) -> None:
    await plc.run_line(SPEED_MM_S, counts_per_mm=CPM, pitch_mm=PITCH_MM, units=units)


# ---- configuration


async def test_station_cameras_refuses_a_line_it_cannot_match_frames_on() -> None:
    serials = {name: serial(name) for name in OFFSETS_MM}
    with pytest.raises(GatewayConfigError, match=rf"line '{LINE}' declares no stations \(lines.{LINE}.stations\)"):
        station_cameras(line_settings(serials, stations=False), LINE, RECIPE)
    with pytest.raises(GatewayConfigError, match="line 'elsewhere' declares no stations"):
        station_cameras(line_settings(serials), "elsewhere", RECIPE)
    with pytest.raises(GatewayConfigError, match=rf"matched by encoder position; set lines.{LINE}.counts_per_mm"):
        station_cameras(line_settings(serials, counts_per_mm=None), LINE, RECIPE)
    # A line whose second station is "side": the recipe has no such station, and its "bottom" is none of the line's.
    settings = line_settings(serials)
    timing = settings.lines[LINE]
    side = timing.model_copy(update={"stations": [timing.stations[0], StationSettings(name="side", camera="S", offset_mm=80)]})
    with pytest.raises(GatewayConfigError) as err:
        station_cameras(settings.model_copy(update={"lines": {LINE: side}}), LINE, RECIPE)
    assert err.value.problems == [
        f"recipe {RECIPE.ref} has no [[station]] 'side' that line '{LINE}' declares",
        f"recipe {RECIPE.ref} station 'bottom' is not a station of line '{LINE}'",
    ]
    # A consistent line: each station's camera, features and offset in encoder counts.
    made = station_cameras(settings, LINE, RECIPE)
    assert [(s.station, s.serial, s.offset_counts, s.features.pixel_format) for s in made] == [
        ("top", serials["top"], 500, "RGB8"), ("bottom", serials["bottom"], 1000, "RGB8"),
    ]


async def test_open_refuses_every_feature_a_camera_cannot_take_naming_it() -> None:
    serials = {name: serial(name) for name in OFFSETS_MM}
    recipe = with_cameras(
        top=CameraFeatures(pixel_format="RGB8", gain=50.0),
        bottom=CameraFeatures(pixel_format="RGB8", roi=(0, 0, 4096, 48)),
    )
    fakes = [FakeGigECamera(sn, W, H, pixel_format="RGB8") for sn in serials.values()]
    try:
        for fake in fakes:
            fake.start()
        stations = station_cameras(line_settings(serials), LINE, recipe)
        signals = PlcLineSignals(fast_plc("opc.tcp://127.0.0.1:1/unused"))
        gateway = Gateway(line_settings(serials), LINE, recipe, LOT, cast(FramePublisher, RecordingPublisher()),
                          signals, stations, tolerance_counts=TOLERANCE)
        with pytest.raises(GatewayConfigError) as err:
            await asyncio.to_thread(gateway.open)
        top, bottom = err.value.problems
        assert top.startswith(f"station top camera {serials['top']}: Gain: 50 is outside the camera's range 0-10")
        assert bottom.startswith(f"station bottom camera {serials['bottom']}: Width: 4096 is outside the camera's range")
        assert not any(s.camera.connected for s in stations)  # every camera released
    finally:
        for fake in fakes:
            fake.stop()


# ---- a line running


async def test_every_unit_gets_one_frame_per_station_with_its_own_image_and_metadata(plc: PlcSimulator) -> None:
    n = 10
    async with gateway_on_line(plc) as run:
        await run_units(plc, n)
        await eventually(lambda: len(run.rec.frames) >= 2 * n, what=f"{2 * n} frames published")
        stats = await run.finish()
    rec = run.rec
    assert rec.rejects == [] and rec.dead == []
    assert stats.units == n and [u.seq for u in run.units] == list(range(n))
    assert [u.position for u in run.units] == plc.trigger_positions[-n:]
    for station, offset_mm in OFFSETS_MM.items():
        got = rec.published(station)
        assert sorted(got) == sorted(u.unit_id for u in run.units), station
        rendered = dict(run.served[station])
        for unit in run.units:
            p = got[unit.unit_id]
            m = p.meta
            assert (m.unit_id, m.line, m.lot, m.station, m.camera) == (
                f"{LOT}-{unit.seq:07d}", LINE, LOT, station, run.serial(station))
            assert (m.product, m.content_type) == (RECIPE.product, "image/png")
            # One software trigger per unit: the unit's frame is the camera's (seq+1)-th since power on.
            assert m.frame_id == unit.seq + 1
            assert np.array_equal(decode_rgb(p.image), face(station, unit.seq)), f"{station} unit {unit.seq}: not its image"
            # The camera's own timestamp of that frame: after the fake rendered it, before it was published.
            assert m.camera_ts_ns is not None and rendered[unit.seq] <= m.camera_ts_ns <= p.at_ns
            assert m.encoder_count is not None
            assert abs(m.encoder_count - (unit.position + round(offset_mm * CPM))) <= TOLERANCE
        side = stats.stations[station]
        assert (side.frames, side.published, side.software_triggers, side.reconnects) == (n, n, n, 0)
        tracked = run.gateway.tracking.stations[station]
        assert (tracked.matched, tracked.missing, tracked.incomplete, tracked.unexpected) == (n, 0, 0, 0)
    assert stats.failsafe_rejects == 0


async def test_frames_that_lost_packets_are_failsafe_rejected_never_published(plc: PlcSimulator) -> None:
    n = 12
    async with gateway_on_line(plc) as run:
        run.fakes["bottom"].set_packet_loss(0.1, seed=5)
        await run_units(plc, n)
        await eventually(lambda: len(run.units) == n and run.rec.settled("bottom", n) and run.rec.settled("top", n),
                         what="every unit published or rejected at both stations")
        stats = await run.finish()
    rec = run.rec
    ids = {u.unit_id for u in run.units}
    published, rejected = rec.published("bottom"), rec.rejected("bottom")
    assert rejected, "10 % packet loss on ~9 packets a frame: some frames must be incomplete"
    assert set(published) | set(rejected) == ids and not set(published) & set(rejected)
    for unit_id, r in rejected.items():
        assert (r.line, r.lot, r.camera, r.cause, r.defect) == (LINE, LOT, run.serial("bottom"), "failsafe", "uninspected")
        assert unit_id in ids
    assert any("incomplete frame" in r.reason for r in rejected.values()), [r.reason for r in rejected.values()]
    # The other station is not affected.
    assert set(rec.published("top")) == ids and rec.rejected("top") == {}
    assert stats.failsafe_rejects == len(rejected) and rec.dead == []
    assert run.gateway.tracking.stations["bottom"].incomplete >= 1


async def test_a_camera_unplugged_mid_run_is_rejected_for_while_gone_and_acquires_again_by_itself(
    plc: PlcSimulator,
) -> None:
    async with gateway_on_line(plc) as run:
        rec, top = run.rec, run.fakes["top"]
        await run_units(plc, None)  # without end: the gateway's drain follows only the run's units
        await eventually(lambda: len(rec.published("top")) >= 3, what="first top frames")
        top.stop()
        await eventually(lambda: not run.gateway.stats.stations["top"].connected, what="the camera noticed lost")
        await eventually(lambda: len(rec.rejected("top")) >= 3, what="units passing the unplugged camera rejected")
        top.start()  # plugged in again: a power cycle, frame ids from 1
        back = len(run.units)
        await eventually(
            lambda: any(int(u.split("-")[-1]) > back for u in rec.published("top")), timeout_s=45.0,
            what="top frames published again for units after the camera came back",
        )
        stats = await run.finish()
    ids = [u.unit_id for u in run.units]
    published, rejected = rec.published("top"), rec.rejected("top")
    assert set(published) | set(rejected) == set(ids) and not set(published) & set(rejected)
    for r in rejected.values():
        assert (r.camera, r.cause, r.defect) == (run.serial("top"), "failsafe", "uninspected")
    # The outage is one stretch of units: frames before it, rejects during it, frames after it.
    order = ["p" if u in published else "r" for u in ids]
    stretch = "".join(order)
    assert stretch.startswith("ppp") and stretch.rstrip("p").lstrip("p").count("p") == 0, stretch
    assert stretch.endswith("p"), stretch
    side = stats.stations["top"]
    assert side.reconnects >= 1 and side.connected
    # The other station saw every unit, through the outage.
    assert set(rec.published("bottom")) == set(ids) and rec.rejected("bottom") == {}
    # At most one frame of no unit's, from the camera that came back: Aravis retries a trigger write
    # that was on its way when the camera went (5 x 500 ms); the restarted camera may take the retry
    # and fire it once acquisition starts again (a frame between units, or in a unit's window: then
    # the unit's own frame, the second, is the one left over).
    assert len(rec.dead) <= 1 and all(
        m.station == "top" and reason.endswith("matches no unit") and m.frame_id in (1, 2)
        for m, _, reason, _ in rec.dead
    ), [(m.frame_id, reason) for m, _, reason, _ in rec.dead]


async def test_a_frame_no_unit_expected_is_dead_lettered_with_its_reason(plc: PlcSimulator) -> None:
    n = 4
    async with gateway_on_line(plc) as run:
        top = next(s for s in run.stations if s.station == "top")

        def extra_trigger(p: UnitPassage) -> None:  # half a pitch after unit 1 reached the top station
            if p.unit == 1:
                top.camera.software_trigger()

        plc.on_unit_at(OFFSETS_MM["top"] + PITCH_MM / 2, extra_trigger)
        await run_units(plc, n)
        await eventually(lambda: len(run.rec.frames) >= 2 * n and run.rec.dead, what="frames and the dead letter")
        stats = await run.finish()
    rec = run.rec
    ((meta, image, reason, stage),) = rec.dead
    assert stage == "gateway" and (meta.station, meta.camera, meta.line, meta.lot) == ("top", run.serial("top"), LINE, LOT)
    assert meta.frame_id == 3  # the top camera's frames: unit 0, unit 1, the extra one
    assert meta.encoder_count is not None
    assert reason == f"station top: frame {meta.frame_id} at encoder {meta.encoder_count} matches no unit"
    assert meta.unit_id == f"{LINE}-unexpected-top-{meta.frame_id}"
    assert np.array_equal(decode_rgb(image), face("top", 2))
    # Every unit still has its frames; nothing rejected.
    ids = {u.unit_id for u in run.units}
    assert set(rec.published("top")) == ids == set(rec.published("bottom")) and rec.rejects == []
    assert run.gateway.tracking.stations["top"].unexpected == 1 and stats.units == n
