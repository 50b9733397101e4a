"""`linesight gateway` keeps its /healthz alive from the gateway's event loop (compose's healthcheck
probes it): ticks while the gateway runs, stale once it stopped."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

from pipeline.cli.gateway import run_with_health
from pipeline.core.health import HealthState
from pipeline.gateway.service import CameraSide, Gateway, GatewayStats


class _RunningGateway:
    def __init__(self, run_s: float) -> None:
        self.stats = GatewayStats(units=3, stations={"top": CameraSide(connected=True), "bottom": CameraSide()})
        self._run_s = run_s

    async def run(self, stop: threading.Event) -> GatewayStats:
        await asyncio.sleep(self._run_s)
        return self.stats


def test_health_ticks_while_the_gateway_runs_and_goes_stale_after() -> None:
    health = HealthState("gateway", stale_after_s=0.3)
    seen: list[dict[str, Any]] = []

    def watch() -> None:
        time.sleep(0.6)  # past stale_after_s: only ticks keep it alive
        seen.append(health.snapshot())

    watcher = threading.Thread(target=watch)
    watcher.start()
    gateway = cast(Gateway, _RunningGateway(run_s=0.9))
    stats = asyncio.run(run_with_health(gateway, threading.Event(), health, every_s=0.05))
    watcher.join()
    assert stats.units == 3
    assert seen[0]["alive"] is True and seen[0]["units"] == 3 and seen[0]["cameras_connected"] == 1
    time.sleep(0.4)
    assert health.snapshot()["alive"] is False  # no more ticks once the gateway returned
