"""The embedded PLC: the simulated reject-gate PLC as a child process of the embedded stack.

Like the embedded broker and Triton, it is started only when the settings leave the address
unset (``plc.endpoint``) and the OPC UA gate is in use (``plc.enabled``). It runs the same
`PlcSimulator` tests use (``python -m pipeline.actuation.plc.simulator``) in its own process group, is
probed with a real OPC UA session (connect, read the tags) until a deadline, and the settings
handed back carry its endpoint. Production sets ``plc.endpoint`` to the line's PLC instead.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from pipeline.embedded.process import ManagedProcess, ensure_port_free
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "PLC simulator (OPC UA)"
HOST = "127.0.0.1"
PATH = "/linesight/plc"


async def _probe_async(endpoint: str, heartbeat_node: str, timeout_s: float) -> bool:
    from asyncua import Client

    client = Client(endpoint, timeout=timeout_s)
    await asyncio.wait_for(client.connect(), timeout_s)
    try:
        value = await client.get_node(heartbeat_node).read_value()
        return isinstance(value, int)
    finally:
        await client.disconnect()


def probe_plc(endpoint: str, heartbeat_node: str, timeout_s: float = 2.0) -> bool:
    """One OPC UA session: connect and read the PLC heartbeat tag."""
    return asyncio.run(_probe_async(endpoint, heartbeat_node, timeout_s))


def gate_log_path(settings: Settings) -> Path:
    """Where the embedded PLC simulator records what the gate did (what physically happened)."""
    return settings.log_dir / "plc-gate.jsonl"


class EmbeddedPlc:
    """``with EmbeddedPlc(settings) as resolved:`` — starts the simulator when no PLC is configured."""

    def __init__(self, settings: Settings, *, fired_log: Path | None = None) -> None:
        """``fired_log``: the simulated gate's own record of every command it acted on (JSON lines:
        unit, seq, time, reject-all, action); default ``<log_dir>/plc-gate.jsonl``."""
        self.settings = settings
        self.port = settings.plc.embedded_port
        self.log_path = settings.log_dir / "plc-simulator.log"
        self.fired_log = fired_log or gate_log_path(settings)
        self.process: ManagedProcess | None = None
        self.startup_s: float | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{HOST}:{self.port}{PATH}"

    @property
    def needed(self) -> bool:
        plc = self.settings.plc
        return plc.enabled and not plc.endpoint

    def start(self) -> Settings:
        s = self.settings
        if not self.needed:
            return s
        ensure_port_free(self.port, SERVICE, HOST, "LINESIGHT_PLC__EMBEDDED_PORT", self.log_path)
        argv = [
            sys.executable, "-m", "pipeline.actuation.plc.simulator", "--host", HOST, "--port", str(self.port),
            "--host-heartbeat-timeout", str(s.plc.embedded_host_heartbeat_timeout_s),
        ]
        argv += ["--fired-log", str(self.fired_log)]
        argv += self._line_args()
        self.process = ManagedProcess(SERVICE, argv, None, self.log_path)
        self.process.start()
        try:
            self.startup_s = self.process.wait_ready(
                lambda: probe_plc(self.endpoint, s.plc.nodes.heartbeat), s.plc.embedded_startup_timeout_s
            )
        except BaseException:
            self.stop()
            raise
        log.info("%s ready at %s in %.1f s (log %s)", SERVICE, self.endpoint, self.startup_s, self.log_path)
        print(f"plc: embedded simulator at {self.endpoint}, ready in {self.startup_s:.1f} s, log {self.log_path}",
              file=sys.stderr, flush=True)
        return s.model_copy(update={"plc": s.plc.model_copy(update={"endpoint": self.endpoint})})

    def _line_args(self) -> list[str]:
        """A simulated line with stations gets its conveyor played by the PLC: encoder and infeed
        trigger latches (docs/cameras.md), units entering at the simulator's rate."""
        s = self.settings
        timing = s.lines.get(s.simulator.line)
        if timing is None or not timing.stations or timing.counts_per_mm is None:
            return []
        pitch_mm = timing.conveyor_speed_mm_s / s.simulator.rate_per_s
        return ["--line-speed", str(timing.conveyor_speed_mm_s), "--counts-per-mm", str(timing.counts_per_mm),
                "--pitch-mm", str(pitch_mm)]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(5.0, kill_expected=True)
            self.process = None

    def __enter__(self) -> Settings:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
