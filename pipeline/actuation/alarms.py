"""Alarms of the actuation path: one code list for the actuator, the gate and the watchdog, and
the raise/clear event they travel in (published as `AlarmRecord`, stored in ``alarms``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AlarmCode(StrEnum):
    """Every alarm the actuation path raises; each stays active until its condition clears."""

    # the watchdog: a component's heartbeats stopped (reject-all while blind)
    PIPELINE_UNHEALTHY = "pipeline_unhealthy"
    # the actuator, on bad input: held until no occurrence for ``watchdog.bad_input_hold_s``
    BAD_COMMAND = "bad_command"  # malformed command/result, unknown line, unusable timing
    UNKNOWN_UNIT = "unknown_unit"  # a command for a unit the camera never captured
    UNTIMED_UNIT = "untimed_unit"  # a captured unit the actuator cannot time (no line, bad count)
    DUPLICATE_UNIT = "duplicate_unit"  # a unit id captured twice (other capture time): both rejected
    NOT_REJECTED = "unit_not_rejected"  # fire failed / window missed: the unit may have passed
    # the PLC gate
    UNREACHABLE = "plc_unreachable"
    WRITE_REFUSED = "plc_write_refused"
    NO_CONFIRMATION = "plc_no_confirmation"
    HEARTBEAT_LOST = "plc_heartbeat_lost"


@dataclass(frozen=True)
class AlarmEvent:
    """An alarm was raised (``active``) or cleared; ``reason`` is for the operator."""

    code: str
    active: bool
    reason: str
    at_ns: int
