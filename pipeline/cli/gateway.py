"""`linesight gateway` and `linesight cameras` (docs/cameras.md): GenICam cameras of a line's stations."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.core.health import HealthState
    from pipeline.gateway.service import Gateway, GatewayStats

SettingsFor = Callable[[argparse.Namespace], Settings]


def cmd_cameras(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.gateway.cameras import list_cameras

    cameras = list_cameras()
    if args.json:
        print(json.dumps([asdict(c) for c in cameras], indent=2))
    elif not cameras:
        print("no GenICam camera answered (GigE Vision discovery on every interface, USB3 Vision)")
    for c in cameras:
        print(f"{c.serial:<20} {c.vendor} {c.model} ({c.protocol}, {c.address})")
    return 0


async def run_with_health(gateway: Gateway, stop: threading.Event, health: HealthState,
                          every_s: float = 1.0, line: str = "") -> GatewayStats:
    """The gateway until `stop`, ticking `health` from the gateway's own event loop, so /healthz
    goes stale (503, the container's healthcheck fails) when that loop stalls or has ended; its
    counts go to the metrics (``line``) at the same pace."""
    from pipeline.core.metrics import Totals

    m = health.metrics
    units, rejects = Totals(m.counter("linesight_gateway_units")), Totals(m.counter("linesight_failsafe_rejects"))
    published, connected = Totals(m.counter("linesight_gateway_frames_published")), m.gauge("linesight_cameras_connected")

    async def beat() -> None:
        while True:
            s = gateway.stats
            cameras = sum(c.connected for c in s.stations.values())
            health.tick(units=s.units, failsafe_rejects=s.failsafe_rejects, cameras_connected=cameras)
            units.advance(s.units, line)
            rejects.advance(s.failsafe_rejects, line, "gateway")
            for station, side in s.stations.items():
                published.advance(side.published, line, station)
            connected.labels(line).set(cameras)
            await asyncio.sleep(every_s)

    task = asyncio.get_running_loop().create_task(beat(), name="gateway-health")
    try:
        return await gateway.run(stop)
    finally:
        task.cancel()


def cmd_gateway(args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
    from pipeline.core.health import HealthState, serve_health
    from pipeline.gateway.publisher import FramePublisher, new_lot
    from pipeline.gateway.service import Gateway, station_cameras
    from pipeline.gateway.triggers import PlcLineSignals
    from pipeline.recipes.schema import load_recipe

    recipe_id = args.recipe or settings.stream.line_recipes.get(args.line)
    if not recipe_id:
        raise SystemExit(f"line {args.line!r} has no recipe: pass --recipe or set stream.line_recipes")
    recipe = load_recipe(settings.stream.recipes_dir / f"{recipe_id}.toml", settings.triton.model_repository)
    stations = station_cameras(settings, args.line, recipe)
    timing = settings.lines[args.line]
    assert timing.counts_per_mm is not None  # station_cameras refuses a line without an encoder
    lot = args.lot or new_lot(args.line)
    publisher = FramePublisher(settings)
    health = HealthState("gateway")
    server = serve_health(health, settings.services.gateway_health_port, settings.services.health_host)
    signals = PlcLineSignals(settings.plc)
    gateway = Gateway(settings, args.line, recipe, lot, publisher, signals, stations,
                      tolerance_counts=round(args.tolerance_mm * timing.counts_per_mm))
    try:
        gateway.open()
        health.set_ready(True)
        if args.duration:
            threading.Timer(args.duration, stop.set).start()
        stats = asyncio.run(run_with_health(gateway, stop, health, line=args.line))
    finally:
        server.shutdown()
        publisher.close()
    print(f"lot {lot}: {stats.units} units, {stats.failsafe_rejects} fail-safe rejected at the gateway")
    tracking = gateway.tracking.stations
    for name, s in stats.stations.items():
        t = tracking[name]
        print(f"  station {name}: {s.published} frames published, {t.incomplete} incomplete, "
              f"{t.unexpected} unexpected, {t.missing} units with no frame, {s.reconnects} reconnects")
    return 0


def register(sub: argparse._SubParsersAction, settings_for: SettingsFor,
                              stop_on_signals: Callable[[], threading.Event]) -> None:
    p = sub.add_parser("gateway", help="acquire a line's station cameras (GigE Vision / USB3 Vision) and "
                       "publish each frame matched to its unit")
    p.add_argument("--line", required=True, help="line id (its stations: lines.<line>.stations)")
    p.add_argument("--recipe", help="recipe id (default: the line's in stream.line_recipes)")
    p.add_argument("--lot", help="lot id (default: line and UTC time)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0 = until Ctrl-C)")
    p.add_argument("--tolerance-mm", type=float, default=5.0,
                   help="how far from its expected position a unit's frame may be (at most half the unit pitch)")
    p.set_defaults(func=lambda a: cmd_gateway(a, settings_for(a), stop_on_signals()))

    p = sub.add_parser("cameras", help="list the GenICam cameras this host can see")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: cmd_cameras(a, settings_for(a)))
