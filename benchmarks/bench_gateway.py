"""Benchmark: how many frames/s one camera gateway sustains, at what CPU, and how fast.

    .venv/bin/python benchmarks/bench_gateway.py [--stations 3] [--rate 10] [--seconds 20]
        [--size 160x160 --pixel-format RGB8 | --size 640x480 --pixel-format Mono8] [--codec png]
        [--sweep [--max-rate 80] [--steps 3]]

One gateway (`pipeline.gateway.service.Gateway`, this process) acquires from --stations fake GigE
Vision cameras on the loopback through Aravis (real GVCP/GVSP), software-triggered as each unit
reaches its station; units come from the simulated PLC's line over OPC UA (`PlcLineSignals`,
as in production: the infeed trigger latches the encoder, the gateway polls the PLC); every frame
is encoded (PNG unless --codec jpeg) and published to the embedded Tansu broker (a real Kafka
produce, acks=all). The fake cameras and the PLC simulator run in a child process (the line), so
the gateway's CPU is measured alone; the line's and the broker's CPU are printed beside it.

The line is the demo's (`pipeline.demo.gige`): a unit enters every --pitch-mm (25 mm) of belt, the
belt runs at rate x pitch, stations are 100 mm apart from 50 mm past the trigger point, and a frame
may be --tolerance-mm (10 mm) from its unit's expected position. Images: the demo's rendered
160x160 RGB tablets, or, for --size 640x480, the same tablets scaled up on a grey field with
sensor noise (sigma 2 grey levels: PNG cost depends on noise).

Per run it prints: units, frames expected and published, frames lost at any stage (incomplete,
units missing a frame, unexpected frames, fail-safe rejects, dead letters), the frames/s held,
the gateway's CPU per frame (`time.process_time` of this process: Aravis's stream threads,
librdkafka's threads, the OPC UA client, encoding), and latencies in ms:

* trigger -> produced: the gateway's `software_trigger()` call to `produce()` having returned
  (frame received, matched to its unit, encoded and queued to librdkafka);
* trigger -> acked: to the broker's acknowledgement (delivery report, served by a poll thread of
  this benchmark so that it is timed when it arrives; librdkafka's linger.ms is 5);
* station -> acked: from the moment the simulated PLC had the unit at the station (its line hook,
  in the child) to the acknowledgement: adds the gateway's trigger lag behind the belt.

``--sweep`` doubles the rate from --rate until a run loses a frame or cannot hold the rate, then
bisects --steps times: the highest unit rate with zero lost frames. Not a test: no assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tables import md_header, md_row  # noqa: E402
from pipeline.embedded.process import free_port  # noqa: E402
from pipeline.embedded.stack import EmbeddedStack  # noqa: E402
from pipeline.gateway.cameras import AcquiredFrame, GenICamCamera  # noqa: E402
from pipeline.gateway.publisher import PRODUCER_CONFIG, FramePublisher, new_lot  # noqa: E402
from pipeline.gateway.service import Gateway, station_cameras  # noqa: E402
from pipeline.gateway.tracking import TrackedUnit  # noqa: E402
from pipeline.gateway.triggers import PlcLineSignals  # noqa: E402
from pipeline.kafka.clients import DeliveryCallback, RenewingProducer  # noqa: E402
from pipeline.recipes.schema import CameraFeatures, Recipe, load_recipe  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.settings.actuation import LineTimingSettings, StationSettings  # noqa: E402
from pipeline.wire.messages import H_FRAME_ID, H_STATION, FrameMeta, GroundTruth  # noqa: E402

LINE = "bench-gw"
COUNTS_PER_MM = 10.0
FIRST_STATION_MM, STATION_SPACING_MM = 50.0, 100.0
PLC_PATH = "/linesight/plc"
IMAGES = 32  # distinct rendered units cycled by every camera


# -- the line: PLC simulator and fake cameras, in a child process ------------------------------


def _images(width: int, height: int, product: str, seed: int) -> list[np.ndarray]:
    """The demo's rendered tablets (160x160 RGB); larger frames: scaled up on a noisy grey field."""
    from pipeline.imaging.catalog import sample_product

    rng = np.random.default_rng(seed)
    today = datetime.now(UTC).date()
    out = []
    for seq in range(IMAGES):
        made = sample_product(rng, product, 0.1, "BENCH", seq, today).image.convert("RGB")
        if made.size == (width, height):
            out.append(np.asarray(made))
            continue
        side = min(width, height)
        tablet = np.asarray(made.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
        field_ = np.full((height, width, 3), 96.0, dtype=np.float32)
        x, y = (width - side) // 2, (height - side) // 2
        field_[y : y + side, x : x + side] = tablet
        field_ += rng.normal(0.0, 2.0, size=(height, width, 1))
        out.append(np.clip(field_, 0, 255).astype(np.uint8))
    return out


def _line_main(conn: Connection, plc_port: int, cameras: list[tuple[str, float]], width: int, height: int,
               pixel_format: str, product: str) -> None:
    """The child: PLC simulator (own event loop thread) and one fake camera per station.

    Commands on `conn`: ("go", speed_mm_s, pitch_mm, units) -> "running"; ("stop",) -> stats."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    from pipeline.actuation.plc.simulator import PlcSimulator, UnitPassage
    from pipeline.gateway.fake_cameras import FakeGigECamera

    images = _images(width, height, product, seed=7)
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="plc-sim", daemon=True)
    loop_thread.start()

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    async def thread_cpu() -> float:
        return time.thread_time()

    plc = PlcSimulator(plc_port, path=PLC_PATH, trigger_ring=64)
    on_loop(plc.start())
    arrivals: dict[tuple[int, int], int] = {}  # (station index, latched position) -> time_ns at the station

    def hook(index: int) -> Callable[[UnitPassage], None]:
        def at_station(p: UnitPassage) -> None:
            arrivals[(index, p.trigger_position)] = time.time_ns()
        return at_station

    def source(i: int) -> Callable[[int], np.ndarray]:
        return lambda n: images[(n + 5 * i) % len(images)]

    fakes = []
    for i, (serial, _offset) in enumerate(cameras):
        fake = FakeGigECamera(serial, width, height, source(i), pixel_format)
        fake.start()
        fakes.append(fake)
    conn.send("ready")
    cpu0 = plc_cpu0 = 0.0
    try:
        while True:
            cmd = conn.recv()
            if cmd[0] == "go":
                _, speed, pitch, units = cmd
                for i, (_serial, offset) in enumerate(cameras):
                    plc.on_unit_at(offset, hook(i))
                cpu0, plc_cpu0 = _cpu_s(), on_loop(thread_cpu())
                on_loop(plc.run_line(speed, counts_per_mm=COUNTS_PER_MM, pitch_mm=pitch, units=units))
                conn.send("running")
            elif cmd[0] == "stop":
                cpu1, plc_cpu1 = _cpu_s(), on_loop(thread_cpu())
                on_loop(plc.stop_line())
                conn.send({"arrivals": dict(arrivals), "cpu_s": cpu1 - cpu0, "plc_cpu_s": plc_cpu1 - plc_cpu0,
                           "frames_sent": [f.frames_sent for f in fakes]})
                break
    finally:
        for fake in fakes:
            fake.stop()
        on_loop(plc.stop())
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(5)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of another process (the broker), 0 when unreadable."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the gateway side: timed triggers and publishes ---------------------------------------------


class Timings:
    """Trigger, produce and acknowledgement times per (station, frame id); this process's clock."""

    def __init__(self) -> None:
        self.triggers: dict[str, list[int]] = {}
        self.produced: dict[tuple[str, int], int] = {}
        self.acked: dict[tuple[str, int], int] = {}
        self.arrived: dict[tuple[str, int], int] = {}  # first packet at the host (Aravis's stream thread)
        self.read: dict[tuple[str, int], int] = {}  # next_frame() returned it to the gateway's reader
        self.unit_of: dict[tuple[str, int], str] = {}
        self.position_of: dict[str, int] = {}  # unit id -> latched encoder position
        self.dead_letters = 0
        self.lock = threading.Lock()


def timed_camera_factory(timings: Timings, station_of: dict[str, str]) -> Callable[[str, CameraFeatures], GenICamCamera]:
    class TimedCamera(GenICamCamera):
        def software_trigger(self) -> None:
            timings.triggers.setdefault(station_of[self.serial], []).append(time.time_ns())
            super().software_trigger()

        def next_frame(self, timeout_s: float) -> AcquiredFrame | None:
            frame = super().next_frame(timeout_s)
            if frame is not None:
                key = (station_of[self.serial], frame.frame_id)
                timings.read[key], timings.arrived[key] = time.time_ns(), frame.system_ts_ns
            return frame

    return TimedCamera


class TimedProducer(RenewingProducer):
    """The gateway's producer, unchanged, with each frame's broker acknowledgement timed."""

    def __init__(self, settings: Settings, timings: Timings, linger_ms: float | None) -> None:
        config: dict[str, Any] = PRODUCER_CONFIG | ({} if linger_ms is None else {"linger.ms": linger_ms})
        super().__init__(settings.kafka, "linesight-camera", **config)
        self._timings = timings
        self._frames_topic = settings.kafka.topic_frames

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                headers: Any = None, on_delivery: DeliveryCallback | None = None) -> None:
        h = dict(headers or [])
        station, frame_id = h.get(H_STATION), h.get(H_FRAME_ID)
        if topic == self._frames_topic and station is not None and frame_id is not None:
            frame = (station.decode(), int(frame_id))
            then = on_delivery

            def timed(err: Any, msg: Any) -> None:
                if err is None:
                    self._timings.acked[frame] = time.time_ns()
                if then is not None:
                    then(err, msg)

            on_delivery = timed
        super().produce(topic, key, value, headers, on_delivery)


class TimedPublisher(FramePublisher):
    """The gateway's publisher (its producer configuration), with each frame's produce() return and ack timed.

    Delivery reports are served by a thread of ours (`poll(0.001)`) so that an ack is timed when it
    arrives, not at the gateway's next publish."""

    def __init__(self, settings: Settings, timings: Timings, linger_ms: float | None = None) -> None:
        self._timed = TimedProducer(settings, timings, linger_ms)
        super().__init__(settings, self._timed)
        self._timings = timings
        self._halt = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="bench-acks", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._halt.is_set():
            self._timed.poll(0.001)

    def publish(self, meta: FrameMeta, image: bytes, truth: GroundTruth | None = None) -> bool:
        ok = super().publish(meta, image, truth)
        if ok and meta.station and meta.frame_id is not None:
            key = (meta.station, meta.frame_id)
            self._timings.produced[key] = time.time_ns()
            self._timings.unit_of[key] = meta.unit_id
        return ok

    def dead_letter(self, meta: FrameMeta, image: bytes, reason: str, stage: str) -> None:
        self._timings.dead_letters += 1
        super().dead_letter(meta, image, reason, stage)

    def close(self) -> None:
        self._halt.set()
        self._poller.join(2)
        super().close()


# -- one run -------------------------------------------------------------------------------------


@dataclass
class Run:
    rate: float
    stations: int
    units: int = 0
    expected: int = 0
    published: int = 0
    sent: int = 0
    triggers: int = 0
    incomplete: int = 0
    missing: int = 0
    unexpected: int = 0
    failsafe: int = 0
    dead_letters: int = 0
    fps: float = 0.0
    wall_s: float = 0.0
    gw_cpu_ms: float = 0.0  # per frame
    idle_ms_s: float = 0.0  # gateway CPU per second with the belt stopped
    line_cpu_ms: float = 0.0  # cameras + PLC simulator, per frame
    plc_cpu_ms: float = 0.0
    broker_cpu_ms: float = 0.0
    lat: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # name -> p50, p99, max (ms)

    @property
    def lost(self) -> int:
        return (self.expected - self.published) + self.incomplete + self.missing + self.unexpected + self.failsafe \
            + self.dead_letters

    def rate_cell(self) -> str:
        return f"{self.rate:g} ({self.rate * 60:.0f}/min)"

    def row(self) -> list[object]:
        return [self.rate_cell(), self.stations, self.units, f"{self.published}/{self.expected}",
                f"{self.incomplete}/{self.missing}/{self.unexpected}/{self.failsafe}/{self.dead_letters}",
                f"{self.fps:.1f}", f"{self.gw_cpu_ms:.2f}", f"{self.idle_ms_s:.0f}",
                f"{self.gw_cpu_ms - self.idle_ms_s * self.wall_s / max(1, self.published):.2f}",
                f"{self.line_cpu_ms:.2f} ({self.plc_cpu_ms:.2f})",
                f"{self.broker_cpu_ms:.2f}"]

    def latency_row(self) -> list[object]:
        def q(name: str) -> str:
            p50, p99, mx = self.lat.get(name, (float("nan"),) * 3)
            return f"{p50:.1f} / {p99:.1f} / {mx:.1f}"

        return [self.rate_cell(), *(q(name) for name in LATENCIES)]


COLUMNS = ["units/s", "stations", "units", "frames published/expected",
           "incomplete/missing/unexpected/failsafe/dead-letter", "frames/s held", "gateway CPU ms/frame",
           "gateway CPU idle ms/s", "gateway CPU ms/frame over idle",
           "line CPU ms/frame (of which PLC sim)", "broker CPU ms/frame"]
# Stages of trigger->acked: the camera's GVCP trigger to the frame's first packet at the host, its
# assembly by Aravis until the gateway's reader took it, then queue wait + match + encode + produce.
STAGES = ["trigger->arrived", "arrived->read", "read->produced", "produced->acked"]
LATENCIES = ["trigger->produced", "trigger->acked", "station->acked", *STAGES]


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3
    a = np.asarray(values)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


def encode_cost(args: argparse.Namespace) -> str:
    """`encode_frame` alone on this process's CPU, on the benchmark's images as the gateway gets them."""
    from pipeline.gateway.pixels import encode_frame

    width, height = (int(v) for v in args.size.split("x"))
    images = _images(width, height, Settings().simulator.product, seed=7)
    if args.pixel_format == "Mono8":  # the gateway decodes Mono8 to HxW (luma)
        images = [np.asarray(Image.fromarray(im).convert("L")) for im in images]
    features = CameraFeatures(pixel_format=args.pixel_format, codec=args.codec)
    sizes, start = [], time.process_time()
    for im in images:
        sizes.append(len(encode_frame(im, features)[0]))
    cpu_ms = (time.process_time() - start) * 1000 / len(images)
    return f"encode_frame {cpu_ms:.2f} CPU ms/frame, {np.mean(sizes) / 1024:.0f} KiB/frame"


def recipe_for(tmp: Path, args: argparse.Namespace, settings: Settings) -> Recipe:
    stations = "".join(
        f'\n[[station]]\nname = "s{i + 1}"\ninspections = ["appearance"]\n\n[station.camera]\n'
        f'pixel_format = "{args.pixel_format}"\ntrigger_source = "Software"\ncodec = "{args.codec}"\n'
        for i in range(args.stations)
    )
    path = tmp / "bench-gateway.toml"
    path.write_text(
        'id = "bench-gateway"\nversion = 1\nproduct = "tablet-round-white-10mm"\n\n'
        '[[inspection]]\nname = "appearance"\nkind = "classifier"\nmodel = "tablet_inspector"\n' + stations
    )
    return load_recipe(path, settings.triton.model_repository)


def run_rate(base: Settings, recipe: Recipe, args: argparse.Namespace, rate: float, index: int,
             broker_pid: int | None) -> Run:
    width, height = (int(v) for v in args.size.split("x"))
    speed = rate * args.pitch_mm
    offsets = [FIRST_STATION_MM + i * STATION_SPACING_MM for i in range(args.stations)]
    serials = [f"LSB{os.getpid() % 100000:05d}{index:02d}{i:02d}" for i in range(args.stations)]
    names = [f"s{i + 1}" for i in range(args.stations)]
    plc_port = free_port()
    timing = LineTimingSettings(
        conveyor_speed_mm_s=speed, counts_per_mm=COUNTS_PER_MM, camera_to_gate_mm=offsets[-1] + 4 * args.pitch_mm,
        stations=[StationSettings(name=n, camera=s, offset_mm=o) for n, s, o in zip(names, serials, offsets, strict=True)],
    )
    settings = base.model_copy(update={
        "lines": {LINE: timing},
        "plc": base.plc.model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{plc_port}{PLC_PATH}"}),
    })
    units = max(1, round(rate * args.seconds))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    line = ctx.Process(target=_line_main, name="bench-line",
                       args=(child, plc_port, list(zip(serials, offsets, strict=True)), width, height,
                             args.pixel_format, settings.simulator.product))
    line.start()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("the line process (PLC simulator, fake cameras) did not start")
        return _measure(settings, recipe, args, rate, units, speed, offsets, serials, names, parent, broker_pid)
    finally:
        line.join(15)
        if line.is_alive():
            line.kill()


def _measure(settings: Settings, recipe: Recipe, args: argparse.Namespace, rate: float, units: int, speed: float,
             offsets: list[float], serials: list[str], names: list[str], conn: Connection,
             broker_pid: int | None) -> Run:
    timings = Timings()
    publisher = TimedPublisher(settings, timings, args.linger_ms)
    signals = PlcLineSignals(settings.plc)

    def on_unit(unit: TrackedUnit) -> None:
        timings.position_of[unit.unit_id] = unit.position

    stations = station_cameras(settings, LINE, recipe, timed_camera_factory(timings, dict(zip(serials, names, strict=True))))
    gateway = Gateway(settings, LINE, recipe, new_lot(LINE), publisher, signals, stations,
                      tolerance_counts=round(args.tolerance_mm * COUNTS_PER_MM), on_unit=on_unit)
    gateway.open()
    stop = threading.Event()
    run = Run(rate, len(names), expected=units * len(names))
    window: dict[str, float] = {}

    async def drive() -> None:
        if not await signals.wait_connected(15):
            stop.set()
            raise RuntimeError(f"the gateway did not reach the PLC: {signals.state_reason}")
        await asyncio.sleep(0.5)  # encoder samples for the clock
        idle0 = time.process_time()  # the gateway with the belt stopped: PLC polls, event loop, watchdogs
        await asyncio.sleep(1.0)
        run.idle_ms_s = (time.process_time() - idle0) * 1000
        window["cpu0"], window["broker0"] = time.process_time(), _proc_cpu_s(broker_pid)
        conn.send(("go", speed, args.pitch_mm, units))
        if await asyncio.to_thread(conn.recv) != "running":
            raise RuntimeError("the line did not start")
        window["t0"] = time.monotonic()
        line_s = (units - 1) / rate + (args.pitch_mm + offsets[-1]) / speed
        deadline = time.monotonic() + line_s + 5.0
        while time.monotonic() < deadline:
            done = sum(s.published for s in gateway.stats.stations.values())
            if gateway.stats.units >= units and done >= run.expected:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the last acks
        window["cpu1"], window["broker1"] = time.process_time(), _proc_cpu_s(broker_pid)
        window["t1"] = time.monotonic()
        stop.set()

    async def both() -> None:
        await asyncio.gather(gateway.run(stop, drain_s=3.0), drive())

    try:
        asyncio.run(both())
    finally:
        publisher.close()
        conn.send(("stop",))
        line: dict[str, Any] = conn.recv() if conn.poll(30) else {"arrivals": {}, "cpu_s": 0.0, "plc_cpu_s": 0.0, "frames_sent": []}

    stats, tracking = gateway.stats, gateway.tracking.stations
    run.units = stats.units
    run.published = sum(s.published for s in stats.stations.values())
    run.sent = sum(line["frames_sent"])
    run.triggers = sum(len(t) for t in timings.triggers.values())
    run.incomplete = sum(t.incomplete for t in tracking.values())
    run.missing = sum(t.missing for t in tracking.values())
    run.unexpected = sum(t.unexpected + t.duplicate + t.late for t in tracking.values())
    run.failsafe = stats.failsafe_rejects
    run.dead_letters = timings.dead_letters
    frames = max(1, run.published)
    run.gw_cpu_ms = (window["cpu1"] - window["cpu0"]) * 1000 / frames
    run.broker_cpu_ms = (window["broker1"] - window["broker0"]) * 1000 / frames
    run.line_cpu_ms = line["cpu_s"] * 1000 / frames
    run.plc_cpu_ms = line["plc_cpu_s"] * 1000 / frames

    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    trig_prod, trig_ack, station_ack = [], [], []
    for (station, frame_id), produced in timings.produced.items():
        fired = timings.triggers.get(station, [])
        if not 0 < frame_id <= len(fired):
            continue
        t = fired[frame_id - 1]  # one frame per software trigger: frame ids count from 1
        trig_prod.append((produced - t) / 1e6)
        arrived, read = timings.arrived.get((station, frame_id)), timings.read.get((station, frame_id))
        if arrived is not None and read is not None:
            stages["trigger->arrived"].append((arrived - t) / 1e6)
            stages["arrived->read"].append((read - arrived) / 1e6)
            stages["read->produced"].append((produced - read) / 1e6)
        acked = timings.acked.get((station, frame_id))
        if acked is None:
            continue
        trig_ack.append((acked - t) / 1e6)
        stages["produced->acked"].append((acked - produced) / 1e6)
        position = timings.position_of.get(timings.unit_of[(station, frame_id)])
        at_station = line["arrivals"].get((names.index(station), position)) if position is not None else None
        if at_station is not None:
            station_ack.append((acked - at_station) / 1e6)
    run.lat = {"trigger->produced": _quantiles(trig_prod), "trigger->acked": _quantiles(trig_ack),
               "station->acked": _quantiles(station_ack)} | {k: _quantiles(v) for k, v in stages.items()}
    run.wall_s = window["t1"] - window["t0"]
    for name in names:  # each station's frames/s between its first and last acknowledged frame
        acks = sorted(t for (station, _), t in timings.acked.items() if station == name)
        if len(acks) > 1:
            run.fps += (len(acks) - 1) / ((acks[-1] - acks[0]) / 1e9)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stations", type=int, default=3, help="stations (one camera each)")
    p.add_argument("--rate", type=float, default=10.0, help="units/s entering the line (10 = 600 units/min)")
    p.add_argument("--seconds", type=float, default=20.0, help="line time per run")
    p.add_argument("--size", default="160x160", help="frame WIDTHxHEIGHT (the demo's 160x160; 640x480 ...)")
    p.add_argument("--pixel-format", default="RGB8", choices=["RGB8", "Mono8", "BayerRG8"])
    p.add_argument("--codec", default="png", choices=["png", "jpeg"])
    p.add_argument("--pitch-mm", type=float, default=25.0, help="belt between two units")
    p.add_argument("--tolerance-mm", type=float, default=10.0, help="frame to expected unit position")
    p.add_argument("--linger-ms", type=float, default=None,
                   help="the producer's linger.ms (default: the gateway's, pipeline.gateway.publisher.PRODUCER_CONFIG)")
    p.add_argument("--switch-interval-ms", type=float, default=None,
                   help="sys.setswitchinterval of the gateway process (default: Python's, 5 ms)")
    p.add_argument("--sweep", action="store_true", help="find the highest rate with zero lost frames")
    p.add_argument("--max-rate", type=float, default=80.0)
    p.add_argument("--steps", type=int, default=3, help="bisection steps after the first failing rate")
    args = p.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        base = Settings()
        base = base.model_copy(update={
            "state_dir": Path(tmp) / "state",
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": None, "embedded_port": free_port()}),
        })
        stack = EmbeddedStack(base, with_triton=False, announce=lambda line: print(line, flush=True))
        settings = stack.start()
        try:
            broker_pid = stack.broker.process.pid if stack.broker and stack.broker.process else None
            recipe = recipe_for(Path(tmp), args, settings)
            print(f"{args.stations} stations, {args.size} {args.pixel_format} -> {args.codec}, pitch {args.pitch_mm:g} mm, "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; {encode_cost(args)}",
                  flush=True)
            runs: list[Run] = []
            index = 0

            def once(rate: float) -> Run:
                nonlocal index
                index += 1
                r = run_rate(settings, recipe, args, rate, index, broker_pid)
                runs.append(r)
                print(f"rate {rate:g}/s: {r.published}/{r.expected} frames in {r.wall_s:.1f} s ({r.triggers} triggers, "
                      f"{r.sent} frames sent), lost {r.lost}, "
                      f"{r.fps:.1f} frames/s, gateway {r.gw_cpu_ms:.2f} CPU ms/frame, trigger->acked p99 "
                      f"{r.lat['trigger->acked'][1]:.1f} ms", flush=True)
                return r

            def ok(r: Run) -> bool:
                return r.lost == 0 and r.units == round(r.rate * args.seconds)

            first = once(args.rate)
            if args.sweep:
                good: float | None = args.rate if ok(first) else None
                bad: float | None = None if good else args.rate
                rate = args.rate
                while bad is None and rate * 2 <= args.max_rate:
                    rate *= 2
                    if ok(once(rate)):
                        good = rate
                    else:
                        bad = rate
                low = good or 0.0
                if bad is not None:
                    for _ in range(args.steps):
                        mid = round((low + bad) / 2, 1)
                        if mid <= low or mid >= bad:
                            break
                        if ok(once(mid)):
                            low = mid
                        else:
                            bad = mid
                limit = f"first failing {bad:g}/s" if bad is not None else f"--max-rate {args.max_rate:g} not exceeded"
                print(f"highest rate with zero lost frames: {low:g} units/s = {low * args.stations:g} frames/s ({limit})")
            print(f"load average {os.getloadavg()[0]:.2f} at end\n")
            print(md_header(COLUMNS))
            for r in sorted(runs, key=lambda r: r.rate):
                print(md_row(r.row()))
            print("\nlatency, ms p50 / p99 / max\n")
            print(md_header(["units/s", *LATENCIES]))
            for r in sorted(runs, key=lambda r: r.rate):
                print(md_row(r.latency_row()))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
