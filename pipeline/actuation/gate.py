"""The reject gate as the scheduler sees it: one interface, and the simulated gate behind it.

`RejectScheduler` acts on each unit at its fire time: a reject through `Gate.fire_unit`, a pass
through `Gate.release_unit` when the gate does positive release (`Gate.positive_release`: the
diverter rejects whatever is not released, so a dead actuator rejects instead of passing), and
reads a `FireResult` (never an exception); the watchdog's fail-safe goes to `Gate.set_fail_safe`.
`pipeline.actuation.plc.gate.OpcUaGate` drives a real PLC over OPC UA; `SimulatedGate` stands
in for it on a simulated line (``plc.enabled = false``) and in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pipeline.actuation.alarms import AlarmCode
from pipeline.actuation.clock import Clock, SystemClock
from pipeline.actuation.timing_model import UnitRef


class GateError(Exception):
    """Why a gate operation failed; ``code`` is the alarm it raised (None: caller's mistake)."""

    code: AlarmCode | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadGateCommand(GateError):
    """The command itself was unusable (empty unit id...): nothing was sent to the PLC."""


@dataclass(frozen=True)
class FireResult:
    """Outcome of one fire: what every `Gate` answers (``reason`` names the `GateError`)."""

    ok: bool
    unit_id: str
    seq: int | None = None
    fired_ns: int | None = None  # the PLC's fire time (its clock), from ``fired_at``
    error: GateError | None = None

    @property
    def reason(self) -> str:
        return "" if self.error is None else f"{type(self.error).__name__}: {self.error.reason}"


class Gate(Protocol):
    """What the scheduler and the watchdog need of a reject gate. Implementations never raise from
    `fire_unit` or `release_unit`: a failure is a `FireResult` with its `GateError`."""

    # True: units are rejected unless released (the scheduler releases pass units); False: units
    # pass unless fired (`release_unit` is never called).
    positive_release: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def fire_unit(self, unit: UnitRef, cause: str) -> FireResult: ...

    async def release_unit(self, unit: UnitRef) -> FireResult: ...

    async def set_fail_safe(self, active: bool) -> None: ...


class SimulatedGate:
    """The gate of a simulated line (``plc.enabled = false``) and of tests: ``fired`` lists the
    units rejected, ``released`` the units released (positive release); reject-all is remembered
    and refuses releases, as the PLC does."""

    def __init__(self, clock: Clock | None = None, *, positive_release: bool = False) -> None:
        self._clock: Clock = clock or SystemClock()
        self.positive_release = positive_release
        self.fired: list[str] = []
        self.released: list[str] = []
        self.fail_safe = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def fire_unit(self, unit: UnitRef, cause: str) -> FireResult:
        self.fired.append(unit.unit_id)
        return FireResult(True, unit.unit_id, fired_ns=self._clock.now_ns())

    async def release_unit(self, unit: UnitRef) -> FireResult:
        if not self.positive_release:
            return FireResult(False, unit.unit_id, error=BadGateCommand("this gate passes by default: nothing to release"))
        if self.fail_safe:
            return FireResult(False, unit.unit_id, error=GateError("reject-all is active: release refused"))
        self.released.append(unit.unit_id)
        return FireResult(True, unit.unit_id, fired_ns=self._clock.now_ns())

    async def set_fail_safe(self, active: bool) -> None:
        self.fail_safe = active
