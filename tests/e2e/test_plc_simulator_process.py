"""`python -m pipeline.actuation.plc.simulator`: the simulated PLC as its own process, driven by the OPC UA
reject gate. The gate against an in-process `PlcSimulator` is tests/unit/test_plc.py."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from support import fast_plc

from pipeline.actuation.plc.gate import OpcUaGate
from pipeline.embedded.process import free_port

pytestmark = pytest.mark.timeout(60)


async def test_simulator_runs_as_a_module(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "plc.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline.actuation.plc.simulator", "--port", str(port), stdout=log, stderr=log,
    )
    gate = OpcUaGate(fast_plc(f"opc.tcp://127.0.0.1:{port}/linesight/plc"))
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
