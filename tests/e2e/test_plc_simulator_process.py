"""`python -m pipeline.actuation.plc.simulator`: the simulated PLC as its own process, driven by the OPC UA
reject gate. The gate against an in-process `PlcSimulator` is tests/unit/test_plc.py."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from pipeline.actuation.plc.gate import OpcUaGate
from pipeline.embedded.process import free_port
from pipeline.settings.actuation import PlcSettings

pytestmark = pytest.mark.timeout(60)


def fast(endpoint: str) -> PlcSettings:
    """Test-speed timeouts (production defaults are seconds), as in tests/unit/test_plc.py."""
    return PlcSettings.model_validate(dict(
        enabled=True, endpoint=endpoint, heartbeat_poll_s=0.05, heartbeat_timeout_s=0.5,
        confirm_timeout_s=0.3, request_timeout_s=2.0, connect_timeout_s=5.0,
        reconnect_initial_s=0.05, reconnect_max_s=0.3,
    ))


async def test_simulator_runs_as_a_module(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "plc.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline.actuation.plc.simulator", "--port", str(port), stdout=log, stderr=log,
    )
    gate = OpcUaGate(fast(f"opc.tcp://127.0.0.1:{port}/linesight/plc"))
    try:
        await gate.start()
        assert await gate.wait_connected(30), gate.state_reason
        assert (await gate.fire("from-cli")).ok
    finally:
        await gate.stop()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        log.close()
    assert "PLC simulator on" in (tmp_path / "plc.log").read_text()
