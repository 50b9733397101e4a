"""An asyncua server that plays the reject gate's PLC, for tests and the demo.

It exposes exactly the tags `pipeline.actuation.plc.gate` drives (`PlcNodeIds`), and behaves like the
PLC program would: a write of ``reject_seq`` fires the gate, a write of ``release_seq`` releases the
unit (positive release; refused under reject-all), and either sets the confirmation tags (unit,
sequence, PLC time); ``heartbeat`` counts up; reject-all turns on when LineSight asks for
it or when LineSight's own heartbeat stops. Tests can make it refuse writes, stop confirming,
freeze its heartbeat, or go offline and come back (same port, same state).

It also plays the line (`run_line`): a conveyor at a speed (``encoder_count`` advances at speed x
counts per mm) with units entering at a pitch; each unit passing the trigger point latches the
encoder count into the trigger ring (``trigger_count``, ``trigger_latches``, ``trigger_latch_ids``,
see `PlcNodeIds`), exactly as a PLC's high-speed counter with a latch input would, and hooks
(`on_unit_at`) run when a unit reaches a given distance downstream (where a test or the demo
software-triggers that station's camera).

    python -m pipeline.actuation.plc.simulator --port 4840 [--line-speed 250 --counts-per-mm 10 --pitch-mm 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.binary_server_asyncio import BinaryServer
from asyncua.server.internal_server import InternalServer
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds

from pipeline.core.aio import cancel_and_wait
from pipeline.settings.actuation import PlcNodeIds

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:linesight:plc-simulator"

# tag -> (variant type, initial value, writable by clients)
_TAGS: dict[str, tuple[ua.VariantType, Any, bool]] = {
    "reject_unit": (ua.VariantType.String, "", True),
    "reject_seq": (ua.VariantType.Int64, 0, True),
    "release_unit": (ua.VariantType.String, "", True),
    "release_seq": (ua.VariantType.Int64, 0, True),
    "fired_unit": (ua.VariantType.String, "", False),
    "fired_seq": (ua.VariantType.Int64, 0, False),
    "fired_at": (ua.VariantType.DateTime, datetime(1970, 1, 1, tzinfo=UTC), False),
    "heartbeat": (ua.VariantType.Int64, 0, False),
    "host_heartbeat": (ua.VariantType.Int64, 0, True),
    "fail_safe": (ua.VariantType.Boolean, False, True),
    "reject_all": (ua.VariantType.Boolean, False, False),
    "encoder_count": (ua.VariantType.Int64, 0, False),
    "trigger_count": (ua.VariantType.Int64, 0, False),
    "trigger_latches": (ua.VariantType.Int64, [], False),  # arrays: sized by ``trigger_ring``
    "trigger_latch_ids": (ua.VariantType.Int64, [], False),
}
_RING_TAGS = ("trigger_latches", "trigger_latch_ids")


_COMMAND_TAGS = ("reject_unit", "reject_seq", "release_unit", "release_seq")


@dataclass(frozen=True)
class FiredRecord:
    """One gate command as the PLC saw it: a reject fired, a release, or a release refused."""

    unit_id: str
    seq: int
    fired_ns: int
    reject_all: bool  # reject-all was active when it came
    action: str = "reject"  # "reject" | "release" | "release_refused" (under reject-all)


@dataclass(frozen=True)
class UnitPassage:
    """A simulated unit at a point of the line: the argument of an `PlcSimulator.on_unit_at` hook."""

    unit: int  # 0-based: the unit's place in its `PlcSimulator.run_line` run
    trigger: int  # the PLC's trigger number for it (``trigger_count`` once it was latched)
    trigger_position: int  # encoder count latched when it passed the trigger point
    offset_mm: float  # where it is now, downstream of the trigger point
    position: int  # encoder count now


UnitHook = Callable[[UnitPassage], None]


@dataclass
class _Run:
    """One `PlcSimulator.run_line`: unit k passes the trigger point at belt travel first_mm + k * pitch_mm."""

    pitch_mm: float
    first_mm: float
    units: int | None
    entered: int = 0  # units latched so far
    first_trigger: int = 0  # trigger number of unit 0


@dataclass
class _Hook:
    offset_mm: float
    hook: UnitHook
    next_unit: int = 0


class _PasswordUsers(UserManager):
    """Only the configured user may log in; it gets the ordinary User role (access levels apply)."""

    def __init__(self, username: str, password: str) -> None:
        self._username, self._password = username, password

    def get_user(
        self, iserver: InternalServer, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username == self._username and password == self._password:
            return User(role=UserRole.User, name=username)
        return None


class PlcSimulator:
    """The simulated PLC. ``async with PlcSimulator(port) as plc:`` or `start`/`stop`."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        path: str = "/linesight/plc",
        nodes: PlcNodeIds | None = None,
        heartbeat_interval_s: float = 0.1,
        host_heartbeat_timeout_s: float | None = None,
        username: str | None = None,
        password: str | None = None,
        certificate: Path | None = None,
        private_key: Path | None = None,
        allow_insecure: bool = True,
        fired_log: Path | None = None,
        trigger_ring: int = 32,
        encoder_start: int = 0,
        encoder_publish_s: float = 0.01,
    ) -> None:
        self.port, self.host, self.path = port, host, path
        self.node_ids = nodes or PlcNodeIds()
        self._heartbeat_interval_s = heartbeat_interval_s
        self._host_timeout_s = host_heartbeat_timeout_s
        self._users = _PasswordUsers(username, password or "") if username else None
        self._certificate, self._private_key = certificate, private_key
        self._allow_insecure = allow_insecure
        self._values: dict[str, Any] = {name: spec[1] for name, spec in _TAGS.items()}
        if trigger_ring < 1:
            raise ValueError(f"trigger_ring must be >= 1, got {trigger_ring}")
        for name in _RING_TAGS:
            self._values[name] = [0] * trigger_ring
        self._values["encoder_count"] = encoder_start
        # The line: belt travel is piecewise linear in time, anchored at the last speed change.
        self._encoder_start = encoder_start
        self._encoder_publish_s = encoder_publish_s
        self._counts_per_mm = 1.0  # the encoder's resolution, set by `run_line`
        self._speed_mm_s = 0.0
        self._anchor_ns = time.monotonic_ns()
        self._anchor_mm = 0.0
        self._run: _Run | None = None
        self._hooks: list[_Hook] = []
        self._line_task: asyncio.Task[None] | None = None
        self._line_lock = asyncio.Lock()  # one `_advance` at a time: reads and the line task both run it
        self._server: Server | None = None
        self._nodeids: dict[str, ua.NodeId] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._refuse_writes = False
        self._confirm = True
        self._heartbeat_frozen = False
        self._offline = False
        self._host_beat_at = time.monotonic()
        self.fired: list[FiredRecord] = []  # rejects fired
        self.released: list[FiredRecord] = []  # positive release: units let through, or refused
        self.writes_refused = 0
        # One JSON line per fire (unit, seq, time, reject-all): what the gate did, for tests that
        # run the simulator as a separate process and check the PLC's side independently.
        self._fired_log = fired_log
        self._latched: deque[int] = deque(maxlen=65_536)  # bounded: a demo line runs without end

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    @property
    def online(self) -> bool:
        return self._server is not None and not self._offline

    @property
    def reject_all(self) -> bool:
        return bool(self._values["reject_all"])

    @property
    def heartbeat(self) -> int:
        return int(self._values["heartbeat"])

    @property
    def encoder_count(self) -> int:
        """The line's encoder count now (what a read of ``encoder_count`` returns)."""
        return self._count_at(self._travel_mm(time.monotonic_ns()))

    @property
    def trigger_count(self) -> int:
        return int(self._values["trigger_count"])

    @property
    def trigger_positions(self) -> list[int]:
        """Encoder counts latched for the latest triggers (up to 65536), in order (for tests)."""
        return list(self._latched)

    async def __aenter__(self) -> PlcSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        server = Server(user_manager=self._users) if self._users else Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("LineSight simulated reject-gate PLC")
        policies: list[ua.SecurityPolicyType] = []
        if self._allow_insecure:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        if self._certificate is not None and self._private_key is not None:
            await server.load_certificate(str(self._certificate))
            await server.load_private_key(str(self._private_key))
            policies += [
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ]
        server.set_security_policy(policies)
        if self._users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        await self._build_address_space(server)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_write)
        server.subscribe_server_callback(CallbackType.PreRead, self._on_read)
        await server.start()
        self._server = server
        self._host_beat_at = time.monotonic()
        await self._apply_refusal()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="plc-sim-heartbeat")
        if self._run is not None and (self._line_task is None or self._line_task.done()):
            self._line_task = asyncio.get_running_loop().create_task(self._line(), name="plc-sim-line")
        log.info("PLC simulator listening on %s", self.endpoint)

    async def stop(self) -> None:
        await cancel_and_wait(self._ticker)
        self._ticker = None
        await cancel_and_wait(self._line_task)
        self._line_task = None
        server, self._server = self._server, None
        self._offline = False
        if server is not None:
            self._snapshot(server)
            await server.stop()

    async def go_offline(self) -> None:
        """The PLC disappears from the network: connections drop, the port refuses; state is kept."""
        if self._server is None or self._server.bserver is None:
            return
        await self._server.bserver.stop()
        self._server.bserver = None
        self._offline = True

    async def go_online(self) -> None:
        """Back on the network on the same port (only the listener restarts: fast)."""
        server = self._server
        if server is None:
            await self.start()
            return
        if server.bserver is not None:
            return
        host, port = server._get_bind_socket_info()
        assert host is not None and port is not None
        bserver = BinaryServer(server.iserver, host, port, server.limits)
        bserver.set_policies(server._policies)
        await bserver.start()
        server.bserver = bserver
        self._offline = False

    # ---- fault injection

    async def refuse_writes(self, refuse: bool = True) -> None:
        """Reject-tag writes answer BadUserAccessDenied (PLC in local/maintenance mode)."""
        self._refuse_writes = refuse
        await self._apply_refusal()

    def confirm_fires(self, confirm: bool = True) -> None:
        """When off, writes are accepted but the gate never confirms (jammed gate)."""
        self._confirm = confirm

    def freeze_heartbeat(self, frozen: bool = True) -> None:
        """When on, the heartbeat stops counting (controller program halted)."""
        self._heartbeat_frozen = frozen

    def watch_host_heartbeat(self, timeout_s: float | None) -> None:
        """Go reject-all when LineSight's heartbeat is silent this long (None: don't watch)."""
        self._host_timeout_s = timeout_s
        self._host_beat_at = time.monotonic()

    async def reset_faults(self) -> None:
        """Back to a healthy PLC: online, accepting and confirming writes, beating, no reject-all."""
        await self.go_online()
        await self.refuse_writes(False)
        self.confirm_fires(True)
        self.freeze_heartbeat(False)
        self.watch_host_heartbeat(None)
        await self._set("fail_safe", False)
        await self._update_reject_all()

    # ---- the line

    async def run_line(
        self,
        speed_mm_s: float,
        *,
        counts_per_mm: float,
        pitch_mm: float,
        units: int | None = None,
        first_unit_mm: float | None = None,
    ) -> None:
        """Run the conveyor at ``speed_mm_s`` with a unit entering every ``pitch_mm`` of belt
        (``units`` of them; None: without end), the first ``first_unit_mm`` of travel from now
        (default: one pitch). Replaces any previous run; the encoder count carries on."""
        if speed_mm_s < 0 or counts_per_mm <= 0 or pitch_mm <= 0:
            raise ValueError(f"line needs speed >= 0, counts_per_mm > 0, pitch_mm > 0 "
                             f"(got {speed_mm_s}, {counts_per_mm}, {pitch_mm})")
        now = time.monotonic_ns()
        await self._advance(now)
        travel = self._travel_mm(now)
        if counts_per_mm != self._counts_per_mm:  # keep the count continuous across runs
            self._encoder_start = self._count_at(travel) - math.floor(travel * counts_per_mm)
            self._counts_per_mm = counts_per_mm
        first = travel + (pitch_mm if first_unit_mm is None else first_unit_mm)
        self._run = _Run(pitch_mm, first, units, first_trigger=self.trigger_count + 1)
        for hook in self._hooks:
            hook.next_unit = 0
        self._set_speed(now, speed_mm_s)
        if self._line_task is None or self._line_task.done():
            self._line_task = asyncio.get_running_loop().create_task(self._line(), name="plc-sim-line")

    def set_line_speed(self, speed_mm_s: float) -> None:
        """Change the belt speed (0: stopped); positions, units and triggers carry on (without a
        run the belt moves empty)."""
        if speed_mm_s < 0:
            raise ValueError(f"speed must be >= 0, got {speed_mm_s}")
        self._set_speed(time.monotonic_ns(), speed_mm_s)

    async def stop_line(self) -> None:
        """Stop the belt and end the run: no more units; the hooks are removed."""
        now = time.monotonic_ns()
        await self._advance(now)
        self._set_speed(now, 0.0)
        self._run = None
        self._hooks.clear()
        await cancel_and_wait(self._line_task)
        self._line_task = None

    def on_unit_at(self, offset_mm: float, hook: UnitHook) -> None:
        """Call ``hook`` each time a unit reaches ``offset_mm`` downstream of the trigger point
        (0: the trigger point, just after its latch). Runs in the simulator's event loop."""
        if offset_mm < 0:
            raise ValueError(f"offset_mm must be >= 0, got {offset_mm}")
        entry = _Hook(offset_mm, hook)
        run = self._run
        if run is not None:  # from the first unit that has not reached it yet
            past = self._travel_mm(time.monotonic_ns()) - run.first_mm - offset_mm
            entry.next_unit = max(0, int(past // run.pitch_mm) + 1)
        self._hooks.append(entry)

    def _travel_mm(self, now_ns: int) -> float:
        return self._anchor_mm + self._speed_mm_s * (now_ns - self._anchor_ns) / 1e9

    def _count_at(self, travel_mm: float) -> int:
        return self._encoder_start + math.floor(travel_mm * self._counts_per_mm)

    def _set_speed(self, now_ns: int, speed_mm_s: float) -> None:
        self._anchor_mm = self._travel_mm(now_ns)
        self._anchor_ns = now_ns
        self._speed_mm_s = speed_mm_s

    async def _advance(self, now_ns: int) -> None:
        """Bring the PLC's line tags up to ``now_ns``: latch every unit that passed the trigger
        point, run every hook whose point a unit passed, in belt order, then the encoder count."""
        async with self._line_lock:
            await self._advance_locked(now_ns)

    async def _advance_locked(self, now_ns: int) -> None:
        travel = self._travel_mm(now_ns)
        run = self._run
        while run is not None:
            events: list[tuple[float, int, _Hook | None]] = []
            if run.units is None or run.entered < run.units:
                events.append((run.first_mm + run.entered * run.pitch_mm, run.entered, None))
            for hook in self._hooks:
                if hook.next_unit < run.entered:
                    events.append((run.first_mm + hook.next_unit * run.pitch_mm + hook.offset_mm, hook.next_unit, hook))
            if not events:
                break
            at, unit, which = min(events, key=lambda e: (e[0], e[2] is not None))
            if at > travel:
                break
            latched = self._count_at(run.first_mm + unit * run.pitch_mm)
            if which is None:
                await self._latch(latched)
                run.entered += 1
                continue
            which.next_unit += 1
            passage = UnitPassage(unit, run.first_trigger + unit, latched, which.offset_mm, self._count_at(at))
            try:
                which.hook(passage)
            except Exception:
                log.exception("line hook at %s mm failed for unit %d", which.offset_mm, unit)
        await self._set("encoder_count", self._count_at(travel))

    async def _latch(self, position: int) -> None:
        """One infeed trigger: the ring slot first, the counter last (see `PlcNodeIds`)."""
        n = self.trigger_count + 1
        ring = len(self._values["trigger_latches"])
        latches, ids = list(self._values["trigger_latches"]), list(self._values["trigger_latch_ids"])
        latches[n % ring], ids[n % ring] = position, n
        await self._set("trigger_latches", latches)
        await self._set("trigger_latch_ids", ids)
        await self._set("trigger_count", n)
        self._latched.append(position)

    def _next_event_s(self, now_ns: int) -> float | None:
        """Seconds until the next latch or hook at the present speed; None: none will come."""
        run = self._run
        if run is None or self._speed_mm_s <= 0:
            return None
        pending: list[float] = []
        if run.units is None or run.entered < run.units:
            pending.append(run.first_mm + run.entered * run.pitch_mm)
        total = run.entered if run.units is None else run.units
        pending += [
            run.first_mm + h.next_unit * run.pitch_mm + h.offset_mm for h in self._hooks if h.next_unit < total
        ]
        if not pending:
            return None
        return max(0.0, (min(pending) - self._travel_mm(now_ns)) / self._speed_mm_s)

    async def _line(self) -> None:
        """Wakes at each latch or hook time and at least every ``encoder_publish_s``, so that
        ``encoder_count`` advances for subscribers too and a speed change is followed within that."""
        while True:
            now = time.monotonic_ns()
            await self._advance(now)
            wait = self._next_event_s(now)
            await asyncio.sleep(self._encoder_publish_s if wait is None else min(wait, self._encoder_publish_s))

    async def _on_read(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        """A read sees the line as it is at that instant, like a PLC's counter read, not as of the
        simulator's last wake-up."""
        if event.is_external and (self._run is not None or self._speed_mm_s > 0):
            await self._advance(time.monotonic_ns())

    # ---- internals

    async def _build_address_space(self, server: Server) -> None:
        await server.register_namespace(NAMESPACE_URI)
        parsed = {name: ua.NodeId.from_string(getattr(self.node_ids, name)) for name in _TAGS}
        top = max(n.NamespaceIndex for n in parsed.values())
        while len(await server.get_namespace_array()) <= top:
            await server.register_namespace(f"{NAMESPACE_URI}:{len(await server.get_namespace_array())}")
        folder_id = ua.NodeId.from_string(f"ns={parsed['reject_seq'].NamespaceIndex};s=LineSight.Plc")
        folder = await server.nodes.objects.add_object(folder_id, "LineSightPlc")
        for name, (vtype, _, writable) in _TAGS.items():
            nodeid = parsed[name]
            node = await folder.add_variable(nodeid, name, ua.Variant(self._values[name], vtype))
            if writable:
                await node.set_writable(True)
        self._nodeids = parsed

    async def _apply_refusal(self) -> None:
        if self._server is None:
            return
        for name in _COMMAND_TAGS:
            await self._server.get_node(self._nodeids[name]).set_writable(not self._refuse_writes)

    async def _on_write(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        if not event.is_external:
            return
        params: ua.WriteParameters = event.request_params
        results: Sequence[ua.StatusCode] = event.response_params or []
        written: dict[str, Any] = {}
        by_id = {nid: name for name, nid in self._nodeids.items()}
        for wv, status in zip(params.NodesToWrite, results, strict=False):
            name = by_id.get(wv.NodeId)
            if name is None or wv.AttributeId != AttributeIds.Value:
                continue
            if not status.is_good():
                if name in _COMMAND_TAGS:
                    self.writes_refused += 1
                continue
            value = wv.Value.Value.Value if wv.Value is not None and wv.Value.Value is not None else None
            written[name] = value
            self._values[name] = value
        if "host_heartbeat" in written:
            self._host_beat_at = time.monotonic()
        if "fail_safe" in written:
            await self._update_reject_all()
        if "reject_seq" in written:
            await self._fire(str(self._values["reject_unit"]), int(written["reject_seq"]))
        if "release_seq" in written:
            await self._release(str(self._values["release_unit"]), int(written["release_seq"]))

    async def _fire(self, unit_id: str, seq: int) -> None:
        record = FiredRecord(unit_id, seq, time.time_ns(), self.reject_all)
        self.fired.append(record)
        await self._acted(record)

    async def _release(self, unit_id: str, seq: int) -> None:
        """Positive release: under reject-all the diverter stays on reject, and nothing is confirmed."""
        refused = self.reject_all
        record = FiredRecord(unit_id, seq, time.time_ns(), refused, "release_refused" if refused else "release")
        self.released.append(record)
        await self._acted(record, confirm=not refused)

    async def _acted(self, record: FiredRecord, confirm: bool = True) -> None:
        now = datetime.now(UTC)
        if self._fired_log is not None:
            with open(self._fired_log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(record)) + "\n")
        if not (confirm and self._confirm):
            return
        unit_id, seq = record.unit_id, record.seq
        await self._set("fired_unit", unit_id)
        await self._set("fired_at", now)
        await self._set("fired_seq", seq)  # last: a client seeing the seq sees unit and time too

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval_s)
            if not self._heartbeat_frozen:
                await self._set("heartbeat", int(self._values["heartbeat"]) + 1)
            await self._update_reject_all()

    async def _update_reject_all(self) -> None:
        host_dead = (
            self._host_timeout_s is not None and time.monotonic() - self._host_beat_at > self._host_timeout_s
        )
        active = bool(self._values["fail_safe"]) or host_dead
        if active != bool(self._values["reject_all"]):
            log.warning("PLC simulator reject-all %s", "ON" if active else "off")
            await self._set("reject_all", active)

    async def _set(self, name: str, value: Any) -> None:
        self._values[name] = value
        if self._server is not None:
            vtype = _TAGS[name][0]
            await self._server.write_attribute_value(self._nodeids[name], ua.DataValue(ua.Variant(value, vtype)))

    def _snapshot(self, server: Server) -> None:
        for name, nodeid in self._nodeids.items():
            dv = server.read_attribute_value(nodeid)
            if dv.Value is not None:
                self._values[name] = dv.Value.Value


async def _serve(
    port: int, host: str, host_heartbeat_timeout_s: float | None, fired_log: Path | None, line: argparse.Namespace
) -> None:
    async with PlcSimulator(
        port, host=host, host_heartbeat_timeout_s=host_heartbeat_timeout_s, fired_log=fired_log
    ) as plc:
        if line.line_speed is not None:
            await plc.run_line(line.line_speed, counts_per_mm=line.counts_per_mm, pitch_mm=line.pitch_mm)
        print(f"PLC simulator on {plc.endpoint} (Ctrl-C to stop)", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated reject-gate PLC (OPC UA server)")
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--host-heartbeat-timeout", type=float, default=None,
                        help="go reject-all when LineSight's heartbeat is silent this many seconds")
    parser.add_argument("--fired-log", type=Path, default=None, help="append one JSON line per gate fire")
    parser.add_argument("--line-speed", type=float, default=None,
                        help="run the simulated line at this many mm/s from the start (units enter without end)")
    parser.add_argument("--counts-per-mm", type=float, default=10.0, help="the simulated line's encoder resolution")
    parser.add_argument("--pitch-mm", type=float, default=50.0, help="belt length between entering units")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # INFO is thousands of address-space lines
    try:
        asyncio.run(_serve(args.port, args.host, args.host_heartbeat_timeout, args.fired_log, args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
