"""The OPC UA reject gate against a real asyncua server playing the PLC (`PlcSimulator`).

Every failure of the PLC (unreachable, refusing writes, not confirming, frozen program) must
come back as a typed `GateError` plus an alarm that clears when the PLC recovers, never as an
exception. No fixed sleeps: conditions are polled until a deadline.
The simulator as its own process (`python -m pipeline.actuation.plc.simulator`) is
tests/e2e/test_plc_simulator_process.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from support import eventually_async, fast_plc

from pipeline.actuation.alarms import AlarmCode, AlarmEvent
from pipeline.actuation.loop import fail_safe_handler
from pipeline.actuation.plc.gate import GateState, OpcUaGate, PlcNoConfirmation, PlcUnreachable, PlcWriteRefused
from pipeline.actuation.plc.simulator import PlcSimulator
from pipeline.actuation.scheduler import GateEvent, Outcome, RejectScheduler
from pipeline.actuation.timing_model import UnitRef
from pipeline.actuation.watchdog import Watchdog
from pipeline.embedded.process import free_port
from pipeline.settings import Settings
from pipeline.settings.actuation import (
    GateMode,
    LineTimingSettings,
    PlcNodeIds,
    PlcSettings,
    SecurityMode,
    SecurityPolicy,
)

# One event loop and one simulated PLC for the module: an asyncua server takes ~2 s to build.
pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_plc() -> AsyncIterator[PlcSimulator]:
    async with PlcSimulator(free_port(), heartbeat_interval_s=0.05) as plc:
        yield plc


@pytest_asyncio.fixture(loop_scope="module")
async def plc(shared_plc: PlcSimulator) -> AsyncIterator[PlcSimulator]:
    await shared_plc.reset_faults()
    shared_plc.fired.clear()
    shared_plc.released.clear()
    yield shared_plc
    await shared_plc.reset_faults()


eventually = partial(eventually_async, timeout_s=10.0, poll_s=0.01)


class Alarms:
    def __init__(self) -> None:
        self.events: list[AlarmEvent] = []

    def __call__(self, e: AlarmEvent) -> None:
        self.events.append(e)

    def raised(self, code: str) -> bool:
        return any(e.code == code and e.active for e in self.events)

    def cleared(self, code: str) -> bool:
        return any(e.code == code and not e.active for e in self.events)


async def test_fire_is_confirmed_with_the_plc_time_and_failures_are_typed_alarms(plc: PlcSimulator) -> None:
    alarms = Alarms()
    gate = OpcUaGate(fast_plc(plc.endpoint), on_alarm=alarms)
    await gate.start()
    try:
        assert await gate.wait_connected(10)
        r1 = await gate.fire("unit-1")
        r2 = await gate.fire("unit-1")  # the gate fires per command; dedup is the scheduler's job
        assert r1.ok and r2.ok and r1.seq is not None and r2.seq == r1.seq + 1
        assert r1.fired_ns is not None and abs(r1.fired_ns - plc.fired[0].fired_ns) < 5_000_000
        assert [f.unit_id for f in plc.fired] == ["unit-1", "unit-1"]

        await plc.refuse_writes()
        refused = await gate.fire("unit-2")
        assert not refused.ok and isinstance(refused.error, PlcWriteRefused)
        assert "BadUserAccessDenied" in refused.reason and AlarmCode.WRITE_REFUSED in gate.alarms
        await plc.refuse_writes(False)

        plc.confirm_fires(False)
        silent = await gate.fire("unit-3")
        assert not silent.ok and isinstance(silent.error, PlcNoConfirmation)
        plc.confirm_fires(True)
        assert (await gate.fire("unit-4")).ok
        assert alarms.cleared(AlarmCode.WRITE_REFUSED) and alarms.cleared(AlarmCode.NO_CONFIRMATION)
        assert not gate.alarms

        bad = await gate.fire("")
        assert not bad.ok and "unusable unit id" in bad.reason

        plc.freeze_heartbeat()
        await eventually(lambda: AlarmCode.HEARTBEAT_LOST in gate.alarms, what="heartbeat alarm")
        assert not gate.healthy
        plc.freeze_heartbeat(False)
        await eventually(lambda: AlarmCode.HEARTBEAT_LOST not in gate.alarms, what="heartbeat alarm cleared")

        await gate.set_fail_safe(True)
        await eventually(lambda: plc.reject_all and gate.reject_all_active is True, what="reject-all on")
        await gate.set_fail_safe(False)
        await eventually(lambda: not plc.reject_all and gate.reject_all_active is False, what="reject-all off")
    finally:
        await gate.stop()


async def test_unreachable_plc_is_an_alarm_and_the_gate_reconnects(plc: PlcSimulator) -> None:
    alarms = Alarms()
    nowhere = OpcUaGate(fast_plc(f"opc.tcp://127.0.0.1:{free_port()}/linesight/plc"), on_alarm=alarms)
    await nowhere.start()
    try:
        # nothing listens: alarm with the reason, fires refused with a typed error, no exception
        await eventually(lambda: nowhere.state is GateState.UNREACHABLE, what="unreachable")
        assert alarms.raised(AlarmCode.UNREACHABLE)
        assert "refused" in nowhere.alarms[AlarmCode.UNREACHABLE].reason.lower()
        r = await nowhere.fire("unit-1")
        assert not r.ok and isinstance(r.error, PlcUnreachable)
    finally:
        await nowhere.stop()

    alarms = Alarms()
    gate = OpcUaGate(fast_plc(plc.endpoint), on_alarm=alarms)
    await gate.start()
    try:
        assert await gate.wait_connected(15)
        assert (await gate.fire("unit-2")).ok
        # the PLC drops off the network, then comes back on the same port
        await plc.go_offline()
        await eventually(lambda: gate.state is not GateState.CONNECTED, what="link loss noticed")
        await eventually(lambda: AlarmCode.UNREACHABLE in gate.alarms, what="unreachable alarm")
        assert isinstance((await gate.fire("unit-3")).error, PlcUnreachable)
        await gate.set_fail_safe(True)  # asked for while offline: delivered after the reconnect
        await plc.go_online()
        await eventually(lambda: gate.state is GateState.CONNECTED, what="reconnected")
        assert alarms.cleared(AlarmCode.UNREACHABLE) and AlarmCode.UNREACHABLE not in gate.alarms
        assert (await gate.fire("unit-4")).ok
        await eventually(lambda: plc.reject_all, what="reject-all re-sent")
        assert [f.unit_id for f in plc.fired] == ["unit-2", "unit-4"]
        seqs = [f.seq for f in plc.fired]
        assert seqs == sorted(set(seqs))  # sequence numbers never repeat across the reconnect
    finally:
        await gate.stop()


async def test_plc_goes_reject_all_when_linesight_stops_beating(plc: PlcSimulator) -> None:
    plc.watch_host_heartbeat(0.5)
    gate = OpcUaGate(fast_plc(plc.endpoint))
    await gate.start()
    assert await gate.wait_connected(10)
    await eventually(lambda: not plc.reject_all, what="host heartbeat seen")
    await gate.stop()  # the actuator dies
    await eventually(lambda: plc.reject_all, what="PLC-side reject-all")


async def test_username_from_password_file_and_wrong_password(tmp_path: Path) -> None:
    secret = tmp_path / "plc-password"
    secret.write_text("s3cret\n")
    async with PlcSimulator(free_port(), username="linesight", password="s3cret") as plc:
        good = OpcUaGate(fast_plc(plc.endpoint, username="linesight", password_file=secret))
        bad = OpcUaGate(fast_plc(plc.endpoint, username="linesight", password="guess"))
        await good.start()
        await bad.start()
        try:
            assert await good.wait_connected(10) and (await good.fire("u1")).ok
            await eventually(lambda: AlarmCode.UNREACHABLE in bad.alarms, what="auth failure alarm")
            assert "Bad" in bad.alarms[AlarmCode.UNREACHABLE].reason
        finally:
            await good.stop()
            await bad.stop()


async def test_wrong_node_ids_are_refused_at_connect_with_the_tag_names(plc: PlcSimulator) -> None:
    nodes = PlcNodeIds(heartbeat="ns=2;s=Nope.Heartbeat")
    gate = OpcUaGate(fast_plc(plc.endpoint, nodes=nodes))
    await gate.start()
    try:
        await eventually(lambda: AlarmCode.UNREACHABLE in gate.alarms, what="config alarm")
        assert "heartbeat=ns=2;s=Nope.Heartbeat" in gate.alarms[AlarmCode.UNREACHABLE].reason
    finally:
        await gate.stop()
    with pytest.raises(ValueError, match="plc.nodes.reject_unit"):
        OpcUaGate(PlcSettings(nodes=PlcNodeIds(reject_unit="not a node id;;")))


async def test_security_settings_are_validated_and_part_of_main_settings() -> None:
    with pytest.raises(ValueError, match="both"):
        PlcSettings(security_policy=SecurityPolicy.BASIC256SHA256)
    with pytest.raises(ValueError, match="certificate"):
        PlcSettings(security_policy=SecurityPolicy.BASIC256SHA256, security_mode=SecurityMode.SIGN)
    s = Settings()
    assert isinstance(s.plc, PlcSettings) and isinstance(s.lines["line-1"], LineTimingSettings)


def _self_signed(directory: Path, name: str, uri: str, usage: list[x509.ObjectIdentifier]) -> tuple[Path, Path]:
    from asyncua.crypto import cert_gen

    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, name, {}, [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname()),
                        x509.DNSName("localhost")], usage,
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    cert_path, key_path = directory / f"{name}.der", directory / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


async def test_basic256sha256_sign_and_encrypt(tmp_path: Path) -> None:
    server_cert, server_key = _self_signed(tmp_path, "plc", "urn:freeopcua:python:server", [ExtendedKeyUsageOID.SERVER_AUTH])
    client_cert, client_key = _self_signed(tmp_path, "actuator", "urn:linesight:actuator", [ExtendedKeyUsageOID.CLIENT_AUTH])
    async with PlcSimulator(free_port(), certificate=server_cert, private_key=server_key, allow_insecure=False) as plc:
        settings = fast_plc(
            plc.endpoint, security_policy=SecurityPolicy.BASIC256SHA256, security_mode=SecurityMode.SIGN_AND_ENCRYPT,
            certificate=client_cert, private_key=client_key,
        )
        gate = OpcUaGate(settings)
        insecure = OpcUaGate(fast_plc(plc.endpoint))
        await gate.start()
        await insecure.start()
        try:
            assert await gate.wait_connected(15), gate.state_reason
            assert (await gate.fire("secure-1")).ok
            await eventually(lambda: AlarmCode.UNREACHABLE in insecure.alarms, what="insecure refused")
        finally:
            await gate.stop()
            await insecure.stop()


@pytest.mark.parametrize("mode", [GateMode.REJECT, GateMode.RELEASE])
async def test_scheduler_drives_the_opcua_gate_once_per_unit_on_time(plc: PlcSimulator, mode: GateMode) -> None:
    """Scheduler + real OPC UA gate: rejects and late units fire once each, passes do not; with
    positive release, exactly the pass units are released and nothing else reaches the PLC."""
    timing = LineTimingSettings(conveyor_speed_mm_s=1000.0, camera_to_gate_mm=150.0, gate_window_mm=100.0, verdict_margin_ms=10.0)
    events: list[GateEvent] = []
    gate = OpcUaGate(fast_plc(plc.endpoint, gate_mode=mode))
    await gate.start()
    assert await gate.wait_connected(10)
    sched = RejectScheduler({"line-1": timing}, gate, on_event=events.append)
    sched.start()
    try:
        now = asyncio.get_running_loop().time
        units = [UnitRef("line-1", f"u{i}", time.time_ns(), lot="L1") for i in range(6)]
        for u in units:
            sched.admit(u)
        for i, u in enumerate(units[:5]):  # u5 never gets a verdict -> late
            action = "reject" if i % 2 == 0 else "pass"
            sched.submit({"unit_id": u.unit_id, "line": u.line, "capture_ns": u.capture_ns, "action": action})
            sched.submit({"unit_id": u.unit_id, "line": u.line, "capture_ns": u.capture_ns, "action": action})
        t0 = now()
        await eventually(lambda: len(events) == 6, what="all units at the gate")
        assert now() - t0 < 5
    finally:
        await sched.stop()
        await gate.stop()
    by = {e.unit_id: e for e in events}
    assert {u for u, e in by.items() if e.outcome is Outcome.FIRED} == {"u0", "u2", "u4", "u5"}
    assert by["u5"].cause == "late" and by["u1"].outcome is Outcome.PASSED
    if mode is GateMode.REJECT:
        assert sorted(f.unit_id for f in plc.fired) == ["u0", "u2", "u4", "u5"] and plc.released == []
    else:
        assert plc.fired == [] and [(f.unit_id, f.action) for f in plc.released] == [("u1", "release"), ("u3", "release")]
        assert by["u1"].fired_ns is not None
    assert all(e.in_window for e in events), [(e.unit_id, e.acted_ns - e.timing.deadline_ns) for e in events]


async def test_watchdog_puts_scheduler_and_plc_in_reject_all_until_healthy(plc: PlcSimulator) -> None:
    """Worker silent -> alarm raised, scheduler and PLC reject everything; beats again -> cleared."""
    gate = OpcUaGate(fast_plc(plc.endpoint))
    await gate.start()
    assert await gate.wait_connected(10)
    sched = RejectScheduler({"line-1": LineTimingSettings()}, gate)
    alarms: list[AlarmEvent] = []
    handler = fail_safe_handler(sched, gate)

    def on_alarm(e: AlarmEvent) -> None:
        alarms.append(e)
        handler(e)

    wd = Watchdog({"worker": 0.3, "triton": 0.3}, clear_after_s=0.1, on_alarm=on_alarm)
    task = asyncio.get_running_loop().create_task(wd.run(0.02))
    beating = {"worker": True, "triton": True}

    async def beat() -> None:
        while True:
            for name, on in beating.items():
                if on:
                    wd.beat(name)
            await asyncio.sleep(0.02)

    beater = asyncio.get_running_loop().create_task(beat())
    try:
        beating["worker"] = False  # the stream processor dies
        await eventually(lambda: sched.fail_safe and plc.reject_all, what="reject-all on")
        assert alarms[0].active and "worker" in alarms[0].reason
        beating["worker"] = True
        await eventually(lambda: not sched.fail_safe and not plc.reject_all, what="reject-all off")
        assert [a.active for a in alarms] == [True, False]
    finally:
        beater.cancel()
        task.cancel()
        await asyncio.gather(beater, task, return_exceptions=True)
        await gate.stop()


async def test_actuation_loop_thread_drives_the_plc(plc: PlcSimulator) -> None:
    from pipeline.actuation.loop import ActuationLoop

    events: list[GateEvent] = []
    timing = LineTimingSettings(conveyor_speed_mm_s=1000.0, camera_to_gate_mm=200.0, gate_window_mm=100.0)
    actuation = ActuationLoop(fast_plc(plc.endpoint, gate_mode=GateMode.REJECT), {"line-1": timing}, on_event=events.append)
    await asyncio.to_thread(actuation.start)
    try:
        await eventually(lambda: actuation.gate is not None and actuation.gate.state is GateState.CONNECTED)
        command = {"unit_id": "t-1", "line": "line-1", "capture_ns": time.time_ns(), "cause": "failsafe"}
        decision = await asyncio.to_thread(actuation.submit, command)
        assert decision.kind.value == "scheduled"
        await eventually(lambda: len(events) == 1, what="fired")
        assert events[0].outcome is Outcome.FIRED and events[0].cause == "failsafe"
        assert [f.unit_id for f in plc.fired] == ["t-1"]
    finally:
        await asyncio.to_thread(actuation.stop)


async def test_positive_release_under_reject_all_releases_nothing(plc: PlcSimulator) -> None:
    """A PLC in reject-all refuses releases, also when the scheduler does not know it (the PLC
    decided alone): the pass unit stays on the reject path, recorded as rejected by default."""
    timing = LineTimingSettings(conveyor_speed_mm_s=1000.0, camera_to_gate_mm=150.0, gate_window_mm=100.0)
    events: list[GateEvent] = []
    gate = OpcUaGate(fast_plc(plc.endpoint, gate_mode=GateMode.RELEASE))
    await gate.start()
    assert await gate.wait_connected(10)
    await gate.set_fail_safe(True)  # behind the scheduler's back
    await eventually(lambda: plc.reject_all, what="PLC reject-all")
    sched = RejectScheduler({"line-1": timing}, gate, on_event=events.append)
    sched.start()
    try:
        unit = UnitRef("line-1", "good-1", time.time_ns(), lot="L1")
        sched.admit(unit)
        sched.submit({"unit_id": unit.unit_id, "line": unit.line, "capture_ns": unit.capture_ns, "action": "pass"})
        await eventually(lambda: len(events) == 1, what="gate event")
    finally:
        await sched.stop()
        await gate.stop()
    assert (events[0].outcome, events[0].cause) == (Outcome.FIRED, "failsafe")
    assert "release failed" in events[0].reason and "PlcNoConfirmation" in events[0].reason
    assert [(f.unit_id, f.action) for f in plc.released] == [("good-1", "release_refused")]
