"""OPC UA client that drives the reject gate's PLC, and reports every failure as an alarm.

The gate handshake, tag by tag (node ids are settings, see `PlcNodeIds`):

1. LineSight writes ``reject_unit`` (String) and ``reject_seq`` (Int64) in ONE write request
   (positive release, ``plc.gate_mode = release``: ``release_unit`` and ``release_seq`` for each
   passed unit; a rejected unit gets no command, the diverter's default is reject). The new
   sequence number is the trigger, so commanding the same unit id again is still a command.
2. The PLC acts and writes ``fired_unit``, ``fired_seq`` and ``fired_at`` (DateTime, PLC clock).
   The client polls until ``fired_seq`` equals its sequence: that is the confirmation. Under
   reject-all the PLC releases nothing (and confirms nothing).
3. The PLC increments ``heartbeat``; LineSight increments ``host_heartbeat`` and writes
   ``fail_safe`` (reject-all request); the PLC reports ``reject_all`` (active reject-all).

Fires are serialised (one handshake at a time), which is what a single gate can do anyway.
Nothing here raises to the caller: an unreachable PLC, a refused write, a missing confirmation
or a frozen PLC heartbeat become a `FireResult` with a typed `GateError` and an alarm
(`AlarmEvent` via ``on_alarm``, current ones in `OpcUaGate.alarms`) that stays active until the
condition is gone. A supervisor task reconnects with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node

from pipeline.actuation.alarms import AlarmCode, AlarmEvent
from pipeline.actuation.gate import BadGateCommand, FireResult, GateError
from pipeline.actuation.timing_model import UnitRef
from pipeline.core.aio import cancel_and_wait, wait_event
from pipeline.core.opcua import LINK_ERRORS as _LINK_ERRORS
from pipeline.core.opcua import close_session, make_client, open_session
from pipeline.core.opcua import describe as _describe
from pipeline.settings.actuation import PlcNodeIds, PlcSettings
from pipeline.wire.messages import MAX_UNIT_ID_CHARS

log = logging.getLogger(__name__)


class GateState(StrEnum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"


class PlcUnreachable(GateError):
    code = AlarmCode.UNREACHABLE


class PlcWriteRefused(GateError):
    code = AlarmCode.WRITE_REFUSED


class PlcNoConfirmation(GateError):
    code = AlarmCode.NO_CONFIRMATION


@dataclass(frozen=True)
class _Nodes:
    reject_unit: Node
    reject_seq: Node
    release_unit: Node
    release_seq: Node
    fired_unit: Node
    fired_seq: Node
    fired_at: Node
    heartbeat: Node
    host_heartbeat: Node
    fail_safe: Node
    reject_all: Node


def validate_node_ids(nodes: PlcNodeIds) -> None:
    """Fail fast (ValueError) on a node id string asyncua cannot parse: a settings typo."""
    for name, value in nodes.model_dump().items():
        try:
            ua.NodeId.from_string(value)
        except Exception as exc:
            raise ValueError(f"plc.nodes.{name}: bad NodeId {value!r}: {exc}") from None


def _to_ns(value: Any) -> int | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(round(value.timestamp() * 1e9))
    return None


class OpcUaGate:
    """The reject gate behind a PLC. ``await start()`` once; then `fire` from the event loop."""

    def __init__(self, settings: PlcSettings, *, on_alarm: Callable[[AlarmEvent], None] | None = None) -> None:
        validate_node_ids(settings.nodes)
        if not settings.endpoint:
            raise ValueError(
                "no PLC endpoint: set LINESIGHT_PLC__ENDPOINT=opc.tcp://host:port/path (the embedded stack "
                "starts a simulated PLC itself; LINESIGHT_PLC__ENABLED=false selects the in-process simulated gate)"
            )
        self._settings = settings
        self._on_alarm = on_alarm
        self.positive_release = settings.positive_release
        self.state = GateState.STOPPED
        self.state_reason = ""
        self.alarms: dict[str, AlarmEvent] = {}  # active alarms by code
        self.plc_heartbeat: int | None = None
        self.reject_all_active: bool | None = None  # as reported by the PLC
        self._client: Client | None = None
        self._nodes: _Nodes | None = None
        self._seq = 0
        self._fail_safe_wanted = False
        self._fail_safe_written: bool | None = None
        self._fire_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._link_lost = asyncio.Event()
        self._link_reason = ""
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Any, *, on_alarm: Callable[[AlarmEvent], None] | None = None) -> OpcUaGate:
        """From the main `Settings` (its ``plc`` section) or a `PlcSettings`."""
        plc = settings if isinstance(settings, PlcSettings) else settings.plc
        return cls(plc, on_alarm=on_alarm)

    # ---- lifecycle

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="plc-gate")

    async def stop(self) -> None:
        self._stop.set()
        await cancel_and_wait(self._task)
        self._task = None
        self.state = GateState.STOPPED

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def healthy(self) -> bool:
        """Connected and the PLC program is alive: the gate can be trusted to act."""
        return self.state is GateState.CONNECTED and AlarmCode.HEARTBEAT_LOST not in self.alarms

    # ---- commands

    async def fire(self, unit_id: str) -> FireResult:
        """Command the gate to remove ``unit_id`` and wait for the PLC's confirmation."""
        return await self._command(unit_id, "reject", lambda n: (n.reject_unit, n.reject_seq))

    async def release(self, unit_id: str) -> FireResult:
        """Positive release: let ``unit_id`` through (the diverter rejects it otherwise) and wait
        for the PLC's confirmation. A PLC in reject-all does not release and does not confirm."""
        return await self._command(unit_id, "release", lambda n: (n.release_unit, n.release_seq))

    async def fire_unit(self, unit: UnitRef, cause: str) -> FireResult:
        """What `RejectScheduler` calls at a rejected unit's fire time. On a positive-release gate
        the unit is rejected by not releasing it: nothing to send."""
        if self.positive_release:
            return FireResult(True, unit.unit_id)
        return await self.fire(unit.unit_id)

    async def release_unit(self, unit: UnitRef) -> FireResult:
        """What `RejectScheduler` calls at a passed unit's fire time (positive release only)."""
        if not self.positive_release:
            return FireResult(False, unit.unit_id, error=BadGateCommand("gate_mode is reject: nothing to release"))
        return await self.release(unit.unit_id)

    async def _command(self, unit_id: str, what: str, pick: Callable[[_Nodes], tuple[Node, Node]]) -> FireResult:
        """One handshake: write the unit and a new sequence number in one request, await ``fired_seq``."""
        if not isinstance(unit_id, str) or not unit_id.strip() or len(unit_id) > MAX_UNIT_ID_CHARS:
            return FireResult(False, str(unit_id)[:64], error=BadGateCommand(f"unusable unit id {unit_id!r}"))
        async with self._fire_lock:
            client, nodes = self._client, self._nodes
            if client is None or nodes is None or self.state is not GateState.CONNECTED:
                reason = self.state_reason or f"PLC {self._settings.endpoint} not connected"
                return FireResult(False, unit_id, error=PlcUnreachable(reason))
            self._seq += 1
            seq = self._seq
            s = self._settings
            unit_node, seq_node = pick(nodes)
            try:
                statuses = await asyncio.wait_for(
                    client.write_values(
                        [unit_node, seq_node],
                        [ua.Variant(unit_id, ua.VariantType.String), ua.Variant(seq, ua.VariantType.Int64)],
                        raise_on_partial_error=False,
                    ),
                    s.request_timeout_s,
                )
            except _LINK_ERRORS as exc:
                return self._link_failure(unit_id, seq, f"writing {what} of {unit_id}: {_describe(exc)}")
            bad = [st for st in statuses if not st.is_good()]
            if bad:
                names = ", ".join(sorted({st.name for st in bad}))
                error = PlcWriteRefused(f"PLC refused the {what} write for {unit_id}: {names}")
                self._raise(AlarmCode.WRITE_REFUSED, error.reason)
                return FireResult(False, unit_id, seq, error=error)
            self._clear(AlarmCode.WRITE_REFUSED, f"PLC accepts {what} writes again")
            return await self._await_confirmation(client, nodes, unit_id, seq)

    async def set_fail_safe(self, active: bool) -> None:
        """Ask the PLC to reject everything (pipeline blind). Kept and re-sent after reconnects."""
        self._fail_safe_wanted = active
        await self._sync_fail_safe()

    # ---- internals

    async def _await_confirmation(self, client: Client, nodes: _Nodes, unit_id: str, seq: int) -> FireResult:
        s = self._settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.confirm_timeout_s
        while True:
            try:
                fired_seq, fired_unit, fired_at = await asyncio.wait_for(
                    client.read_values([nodes.fired_seq, nodes.fired_unit, nodes.fired_at]), s.request_timeout_s
                )
            except _LINK_ERRORS as exc:
                return self._link_failure(unit_id, seq, f"reading fire confirmation of {unit_id}: {_describe(exc)}")
            if fired_seq == seq:
                if fired_unit != unit_id:
                    error = PlcNoConfirmation(f"PLC confirmed seq {seq} for unit {fired_unit!r}, expected {unit_id!r}")
                    self._raise(AlarmCode.NO_CONFIRMATION, error.reason)
                    return FireResult(False, unit_id, seq, error=error)
                self._clear(AlarmCode.NO_CONFIRMATION, "PLC confirms fires again")
                return FireResult(True, unit_id, seq, _to_ns(fired_at) or time.time_ns())
            if loop.time() >= deadline:
                error = PlcNoConfirmation(
                    f"no gate-fired confirmation for {unit_id} (seq {seq}) within {s.confirm_timeout_s:.3f} s"
                )
                self._raise(AlarmCode.NO_CONFIRMATION, error.reason)
                return FireResult(False, unit_id, seq, error=error)
            await asyncio.sleep(s.confirm_poll_s)

    def _link_failure(self, unit_id: str, seq: int | None, reason: str) -> FireResult:
        log.warning("PLC link failure: %s", reason)
        self._link_reason = reason
        self._link_lost.set()  # the supervisor drops this session and reconnects
        return FireResult(False, unit_id, seq, error=PlcUnreachable(reason))

    async def _supervise(self) -> None:
        s = self._settings
        delay = s.reconnect_initial_s
        while not self._stop.is_set():
            self._set_state(GateState.CONNECTING, f"connecting to {s.endpoint}")
            client: Client | None = None
            try:
                client = self._make_client()
                await asyncio.wait_for(self._open(client), s.connect_timeout_s)
            except asyncio.CancelledError:
                if client is not None:
                    await self._close(client)
                raise
            except Exception as exc:  # anything failing to connect is "unreachable", with its reason
                if client is not None:
                    await self._close(client)
                reason = f"cannot connect to PLC {s.endpoint}: {_describe(exc)}"
                self._set_state(GateState.UNREACHABLE, reason)
                self._raise(AlarmCode.UNREACHABLE, reason)
                if await wait_event(self._stop, delay):
                    return
                delay = min(delay * 2, s.reconnect_max_s)
                continue
            delay = s.reconnect_initial_s
            self._client = client
            self._link_lost.clear()
            self._link_reason = ""
            self._fail_safe_written = None
            self._set_state(GateState.CONNECTED, "")
            self._connected.set()
            self._clear(AlarmCode.UNREACHABLE, f"connected to PLC {s.endpoint}")
            reason = "stopped"
            try:
                reason = await self._watch(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"PLC session failed: {_describe(exc)}"
            finally:
                self._connected.clear()
                async with self._fire_lock:  # no fire in flight on a session being torn down
                    self._client, self._nodes = None, None
                await self._close(client)
            if self._stop.is_set():
                return
            self._set_state(GateState.UNREACHABLE, reason)
            self._raise(AlarmCode.UNREACHABLE, reason)
            if await wait_event(self._stop, delay):
                return

    def _make_client(self) -> Client:
        return make_client(self._settings, "LineSight reject actuator")

    async def _open(self, client: Client) -> None:
        s = self._settings
        await open_session(client, s)
        ids = s.nodes
        nodes = _Nodes(*(client.get_node(getattr(ids, name)) for name in _Nodes.__dataclass_fields__))
        # Every configured tag must exist: a wrong node id is an alarm now, not at the first reject.
        values = await client.read_attributes(list(vars(nodes).values()))
        # A gate in one mode need not have the other mode's command tags.
        unused = {"reject_unit", "reject_seq"} if self.positive_release else {"release_unit", "release_seq"}
        missing = [
            name for name, dv in zip(_Nodes.__dataclass_fields__, values, strict=True)
            if name not in unused and dv.StatusCode is not None and not dv.StatusCode.is_good()
        ]
        if missing:
            raise LookupError("PLC lacks the configured tags: " + ", ".join(f"{m}={getattr(ids, m)}" for m in missing))
        by_name = {name: dv.Value.Value if dv.Value is not None else None for name, dv in zip(_Nodes.__dataclass_fields__, values, strict=True)}
        # Sequence numbers must be new to the PLC, also across actuator restarts.
        known = [v for v in (by_name[n] for n in ("reject_seq", "release_seq", "fired_seq")) if isinstance(v, int)]
        self._seq = max([self._seq, *known])
        self._nodes = nodes

    async def _watch(self, client: Client) -> str:
        """Poll the PLC heartbeat, beat ours, keep reject-all in sync; return why the link ended."""
        s = self._settings
        nodes = self._nodes
        assert nodes is not None
        loop = asyncio.get_running_loop()
        last_value: Any = object()
        last_change = loop.time()
        host_beat = 0
        while not self._stop.is_set():
            if self._link_lost.is_set():
                return f"lost the PLC link: {self._link_reason or 'request failed'}"
            try:
                hb, reject_all = await asyncio.wait_for(
                    client.read_values([nodes.heartbeat, nodes.reject_all]), s.request_timeout_s
                )
                host_beat += 1
                await asyncio.wait_for(
                    client.write_values(
                        [nodes.host_heartbeat], [ua.Variant(host_beat, ua.VariantType.Int64)],
                        raise_on_partial_error=False,
                    ),
                    s.request_timeout_s,
                )
            except _LINK_ERRORS as exc:
                return f"lost the PLC link: {_describe(exc)}"
            now = loop.time()
            self.reject_all_active = bool(reject_all)
            if hb != last_value:
                last_value, last_change = hb, now
                self.plc_heartbeat = hb if isinstance(hb, int) else None
                self._clear(AlarmCode.HEARTBEAT_LOST, "PLC heartbeat running again")
            elif now - last_change > s.heartbeat_timeout_s:
                self._raise(
                    AlarmCode.HEARTBEAT_LOST,
                    f"PLC heartbeat stuck at {hb!r} for {now - last_change:.1f} s (controller program stopped?)",
                )
            await self._sync_fail_safe()
            try:
                await asyncio.wait_for(self._link_lost.wait(), s.heartbeat_poll_s)
            except TimeoutError:
                pass
        return "stopped"

    async def _sync_fail_safe(self) -> None:
        client, nodes = self._client, self._nodes
        if client is None or nodes is None or self._fail_safe_written == self._fail_safe_wanted:
            return
        wanted = self._fail_safe_wanted
        try:
            (status,) = await asyncio.wait_for(
                client.write_values(
                    [nodes.fail_safe], [ua.Variant(wanted, ua.VariantType.Boolean)], raise_on_partial_error=False
                ),
                self._settings.request_timeout_s,
            )
        except _LINK_ERRORS as exc:
            self._link_reason = f"writing reject-all: {_describe(exc)}"
            self._link_lost.set()
            log.warning("could not send reject-all=%s to the PLC: %s", wanted, _describe(exc))
            return
        if status.is_good():
            self._fail_safe_written = wanted
            self._clear(AlarmCode.WRITE_REFUSED, "PLC accepts writes again")
        else:
            self._raise(AlarmCode.WRITE_REFUSED, f"PLC refused reject-all={wanted}: {status.name}")

    async def _close(self, client: Client) -> None:
        await close_session(client, self._settings.request_timeout_s)

    def _set_state(self, state: GateState, reason: str) -> None:
        if state is not self.state:
            log.info("PLC gate %s -> %s %s", self.state, state, reason)
        self.state, self.state_reason = state, reason

    def _raise(self, code: AlarmCode, reason: str) -> None:
        if code in self.alarms:
            return
        event = AlarmEvent(str(code), True, reason, time.time_ns())
        self.alarms[code] = event
        log.error("alarm %s RAISED: %s", code, reason)
        self._notify(event)

    def _clear(self, code: AlarmCode, reason: str) -> None:
        if self.alarms.pop(code, None) is None:
            return
        log.warning("alarm %s cleared: %s", code, reason)
        self._notify(AlarmEvent(str(code), False, reason, time.time_ns()))

    def _notify(self, event: AlarmEvent) -> None:
        if self._on_alarm is not None:
            try:
                self._on_alarm(event)
            except Exception:
                log.exception("alarm callback failed")
