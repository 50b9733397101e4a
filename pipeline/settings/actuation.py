"""Settings of the reject gate's PLC connection and of each line's timing model.

Plain pydantic models, nested into the main `pipeline.settings.Settings` as ``plc`` and
``lines`` (so ``LINESIGHT_PLC__ENDPOINT=opc.tcp://plc:4840`` works). This module must not import
`pipeline.settings` (that module imports this one) nor asyncua (settings load everywhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator

from pipeline.settings.secrets import read_secret


class SecurityPolicy(StrEnum):
    """OPC UA security policies the gate client supports (names as asyncua spells them)."""

    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128Sha256RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256Sha256RsaPss"


class SecurityMode(StrEnum):
    """OPC UA message security mode."""

    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class GateMode(StrEnum):
    """What the gate does with a unit LineSight says nothing about.

    ``release`` (positive release, the default): the diverter sends every unit to reject unless
    LineSight releases it with a pulse at its fire time, so a dead actuator, a lost command or a
    unit never heard of is rejected. ``reject``: the diverter passes every unit unless LineSight
    fires a reject; units at the gate between an actuator's death and the PLC's reject-all
    (host heartbeat timeout) pass unrejected. Use it only for a gate that cannot do otherwise.
    """

    RELEASE = "release"
    REJECT = "reject"


class PlcNodeIds(BaseModel):
    """String NodeIds of the gate's PLC tags (``ns=<index>;s=<name>`` or ``ns=<index>;i=<n>``).

    The PLC integrator maps these to the controller's tags; the simulator creates exactly these.
    """

    # Written by LineSight: the unit to remove and a per-command sequence number. Writing the
    # sequence is the trigger (a pulse), so the same unit id written twice is still two commands.
    reject_unit: str = "ns=2;s=LineSight.Gate.RejectUnit"
    reject_seq: str = "ns=2;s=LineSight.Gate.RejectSeq"
    # Positive release (``gate_mode = release``): the unit to let through and its sequence number.
    release_unit: str = "ns=2;s=LineSight.Gate.ReleaseUnit"
    release_seq: str = "ns=2;s=LineSight.Gate.ReleaseSeq"
    # Written by the PLC when the gate has acted (fired a reject, or released a unit): which
    # unit/sequence, and the PLC's time.
    fired_unit: str = "ns=2;s=LineSight.Gate.FiredUnit"
    fired_seq: str = "ns=2;s=LineSight.Gate.FiredSeq"
    fired_at: str = "ns=2;s=LineSight.Gate.FiredAt"
    # Counter the PLC increments periodically: proves the controller program is running.
    heartbeat: str = "ns=2;s=LineSight.Plc.Heartbeat"
    # Counter LineSight increments: the PLC goes reject-all when it stops (LineSight dead).
    host_heartbeat: str = "ns=2;s=LineSight.Host.Heartbeat"
    # Written by LineSight: request reject-all (pipeline unhealthy). Read back: reject-all active.
    fail_safe: str = "ns=2;s=LineSight.Gate.FailSafe"
    reject_all: str = "ns=2;s=LineSight.Gate.RejectAllActive"
    # The line, read by the camera gateway (`pipeline.gateway.triggers.PlcLineSignals`); all
    # written by the PLC. The conveyor encoder's count (Int64, counting up as the belt runs).
    encoder_count: str = "ns=2;s=LineSight.Line.EncoderCount"
    # Infeed triggers (photo-eye at the trigger point, encoder count latched in hardware): the
    # number of triggers so far, and a ring of the latest latches. Trigger n (n = 1, 2, ...) is
    # in slot n mod len(ring): ``trigger_latches[slot]`` its encoder count, ``trigger_latch_ids
    # [slot]`` n itself, written before ``trigger_count`` becomes n. A poll that reads all three
    # in one request loses no trigger while fewer than len(ring) come between polls, and knows
    # how many it lost when more do; a slot whose id is not n is a torn read or an overwrite.
    trigger_count: str = "ns=2;s=LineSight.Line.TriggerCount"
    trigger_latches: str = "ns=2;s=LineSight.Line.TriggerLatch"
    trigger_latch_ids: str = "ns=2;s=LineSight.Line.TriggerLatchId"


class PlcSettings(BaseModel):
    """How the actuator reaches the reject gate's PLC (OPC UA)."""

    enabled: bool = Field(
        default=True, description="false: the simulated in-process gate (no PLC; demos and tests only)"
    )
    endpoint: str | None = Field(
        default=None,
        description="opc.tcp://host:port/path of the gate's PLC; unset starts the embedded PLC simulator",
    )
    gate_mode: GateMode = Field(
        default=GateMode.RELEASE,
        description="release: reject unless released (positive release); reject: pass unless rejected",
    )
    # The embedded PLC simulator (`pipeline.actuation.plc.simulator`) when no endpoint is set.
    embedded_port: int = 14840
    embedded_startup_timeout_s: float = Field(default=30.0, gt=0)
    # The simulator goes reject-all when the actuator's host heartbeat is silent this long. With
    # ``gate_mode = reject``, units at the gate within this after the actuator dies pass.
    embedded_host_heartbeat_timeout_s: float = Field(default=1.0, gt=0)
    nodes: PlcNodeIds = PlcNodeIds()
    security_policy: SecurityPolicy = SecurityPolicy.NONE
    security_mode: SecurityMode = SecurityMode.NONE
    certificate: Path | None = Field(default=None, description="client certificate (.der/.pem)")
    private_key: Path | None = Field(default=None, description="client private key (.pem/.der)")
    private_key_password_file: Path | None = None
    server_certificate: Path | None = Field(
        default=None, description="pinned PLC certificate; unset takes it from the endpoint list"
    )
    # Must match the URI in the client certificate's subjectAltName.
    application_uri: str = "urn:linesight:actuator"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(default=None, description="file holding the PLC password")
    connect_timeout_s: float = Field(default=3.0, gt=0)
    request_timeout_s: float = Field(default=1.0, gt=0)
    # The PLC confirms a fire or release by writing fired_seq; none within this is an alarm.
    confirm_timeout_s: float = Field(default=0.5, gt=0)
    confirm_poll_s: float = Field(default=0.005, gt=0)
    heartbeat_poll_s: float = Field(default=0.25, gt=0)
    # PLC heartbeat unchanged for this long: the controller is not running its program.
    heartbeat_timeout_s: float = Field(default=2.0, gt=0)
    reconnect_initial_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _security_consistent(self) -> PlcSettings:
        none_policy = self.security_policy is SecurityPolicy.NONE
        none_mode = self.security_mode is SecurityMode.NONE
        if none_policy != none_mode:
            raise ValueError("security_policy and security_mode must both be None or both set")
        if not none_policy and (self.certificate is None or self.private_key is None):
            raise ValueError(f"security policy {self.security_policy} needs certificate and private_key")
        return self

    @property
    def positive_release(self) -> bool:
        """The gate rejects every unit not released (`GateMode.RELEASE`)."""
        return self.gate_mode is GateMode.RELEASE

    def resolved_password(self) -> str:
        return read_secret(self.password, self.password_file)

    def resolved_private_key_password(self) -> str | None:
        if self.private_key_password_file is None:
            return None
        return read_secret(None, self.private_key_password_file) or None


class StationSettings(BaseModel):
    """One inspection station of a multi-station line (docs/cameras.md): its camera, named by
    serial number, and where along the conveyor that camera sees a unit.

    A unit gets its id at the line's trigger point (the infeed photo-eye and encoder latch, where
    `LineTimingSettings.camera_to_gate_mm` is measured from); the station's camera sees it
    `offset_mm` further on. Frames are matched to units by that position, and a unit is released
    only when every station of its line passed it.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    camera: str = Field(min_length=1, max_length=64, description="the GenICam camera's serial number")
    offset_mm: float = Field(default=0.0, ge=0, description="downstream of the line's trigger point")


class LineTimingSettings(BaseModel):
    """Where and when a unit captured by the line's camera is at the reject gate.

    Speed mode (default): ``deadline = capture time + camera_to_gate_mm / conveyor_speed_mm_s``.
    Encoder mode (``counts_per_mm`` set): each frame carries the conveyor encoder count at
    capture; the unit is at the gate when the encoder has advanced ``gate_offset_counts`` (by
    default ``camera_to_gate_mm * counts_per_mm``); the time of that is extrapolated from the
    encoder rate observed on recent frames, so speed changes move the deadline with them.
    """

    conveyor_speed_mm_s: float = Field(
        default=250.0, gt=0, description="speed mode; in encoder mode the rate before any sample"
    )
    camera_to_gate_mm: float = Field(default=500.0, gt=0)
    counts_per_mm: float | None = Field(default=None, gt=0, description="set: encoder mode")
    gate_offset_counts: int | None = Field(default=None, gt=0, description="camera-to-gate in counts")
    # Length of conveyor, centred on the gate, in which the gate's push still removes the unit.
    gate_window_mm: float = Field(default=10.0, gt=0)
    # Mechanical delay of the gate (valve + cylinder): the command is sent this early.
    actuation_lead_ms: float = Field(default=0.0, ge=0)
    # A verdict must be at the actuator this long before the fire time (PLC write + slack).
    verdict_margin_ms: float = Field(default=20.0, ge=0)
    # Encoder mode: how often pending deadlines are re-evaluated against the latest encoder rate.
    encoder_recheck_ms: float = Field(default=20.0, gt=0)
    encoder_rate_window_s: float = Field(default=1.0, gt=0)
    # Multi-station lines (docs/cameras.md): empty = one camera, one frame per unit (as before).
    stations: list[StationSettings] = []

    @model_validator(mode="after")
    def _stations_consistent(self) -> LineTimingSettings:
        names = [s.name for s in self.stations]
        cameras = [s.camera for s in self.stations]
        twice = sorted({n for n in names if names.count(n) > 1} | {c for c in cameras if cameras.count(c) > 1})
        if twice:
            raise ValueError(f"stations: each station and camera once per line; repeated: {', '.join(twice)}")
        beyond = [s.name for s in self.stations if s.offset_mm >= self.camera_to_gate_mm]
        if beyond:
            raise ValueError(
                f"stations {', '.join(beyond)}: offset_mm must be short of camera_to_gate_mm "
                f"({self.camera_to_gate_mm} mm, the trigger point to the gate)"
            )
        return self

    def station(self, name: str) -> StationSettings | None:
        return next((s for s in self.stations if s.name == name), None)

    def min_travel_to_fire_s(self) -> float:
        """Seconds from capture to the fire time at the nominal speed (``conveyor_speed_mm_s``).

        In encoder mode the belt's real speed can be higher: set ``conveyor_speed_mm_s`` to the
        line's top speed so the watchdog budget holds at it.
        """
        return self.camera_to_gate_mm / self.conveyor_speed_mm_s - self.actuation_lead_ms / 1000

    @property
    def encoder_mode(self) -> bool:
        return self.counts_per_mm is not None

    def resolved_gate_offset_counts(self) -> int:
        if self.gate_offset_counts is not None:
            return self.gate_offset_counts
        if self.counts_per_mm is None:
            raise ValueError("gate offset in counts needs counts_per_mm (encoder mode)")
        return round(self.camera_to_gate_mm * self.counts_per_mm)


WATCHED_COMPONENTS = ("worker", "triton", "broker")


class WatchdogSettings(BaseModel):
    """Which pipeline components must keep beating, and how long silence is tolerated.

    The timeouts are bounded by the lines' camera-to-gate times (`fail_safe_budget_s`): a unit
    whose frame never reached the actuator (broker down) is only rejected by the PLC's reject-all,
    so reject-all must be active before such a unit can be at the gate.
    """

    enabled: bool = True
    # component name -> seconds without a heartbeat before the line goes fail-safe. Empty (the
    # default): each of `WATCHED_COMPONENTS` gets the longest timeout the lines allow.
    timeouts_s: dict[str, float] = {}
    # Healthy for this long before the fail-safe alarm clears (no flapping on a single beat).
    clear_after_s: float = Field(default=1.0, ge=0)
    check_interval_s: float = Field(default=0.1, gt=0)
    # How often workers and the actuator send heartbeats (well under the timeouts).
    heartbeat_interval_s: float = Field(default=0.25, gt=0)
    # Workers' Triton readiness probe must answer within this.
    triton_probe_timeout_s: float = Field(default=1.0, gt=0)
    # Bad-input alarms (malformed command, unknown line/unit) clear after this long without another.
    bad_input_hold_s: float = Field(default=10.0, gt=0)
    # Budgeted time from the watchdog's decision to the PLC's reject-all being active (one OPC UA
    # write; a few ms measured on a loaded host) and the slack kept before the earliest fire time.
    plc_fail_safe_latency_s: float = Field(default=0.2, ge=0)
    fail_safe_margin_s: float = Field(default=0.05, ge=0)

    def fail_safe_budget_s(self, lines: Mapping[str, LineTimingSettings]) -> tuple[float, str]:
        """The longest watchdog timeout the lines allow, and the line that sets it.

        A unit captured just after the last heartbeat that proved the pipeline (sent at ``h``) is
        at its fire time at ``h + travel - lead``; reject-all is active at the latest at
        ``h + heartbeat_interval + timeout + check_interval + plc_fail_safe_latency``. So:
        ``timeout <= min over lines (travel - lead - margin) - heartbeat_interval - check_interval
        - plc_fail_safe_latency``.
        """
        if not lines:
            raise ValueError("no lines configured: the watchdog timeout cannot be derived")
        line, travel = min(((name, t.min_travel_to_fire_s()) for name, t in lines.items()), key=lambda x: x[1])
        overhead = self.heartbeat_interval_s + self.check_interval_s + self.plc_fail_safe_latency_s
        return travel - self.fail_safe_margin_s - overhead, line

    def resolved_timeouts_s(self, lines: Mapping[str, LineTimingSettings]) -> dict[str, float]:
        """The timeouts to use: derived when unset; a configured one over the budget is refused
        with the numbers (a unit could otherwise reach the gate before reject-all covers it)."""
        budget, line = self.fail_safe_budget_s(lines)
        timing = lines[line]
        why = (
            f"line {line!r}: camera-to-gate {timing.min_travel_to_fire_s() + timing.actuation_lead_ms / 1000:.3f} s"
            f" - actuation lead {timing.actuation_lead_ms / 1000:.3f} s - margin {self.fail_safe_margin_s:.3f} s"
            f" - heartbeat interval {self.heartbeat_interval_s:.3f} s - check interval {self.check_interval_s:.3f} s"
            f" - PLC fail-safe latency {self.plc_fail_safe_latency_s:.3f} s = {budget:.3f} s"
        )
        if budget <= self.heartbeat_interval_s:
            raise ValueError(f"no watchdog timeout can protect the gate ({why}, not above the heartbeat interval): "
                             "slow the line, move the camera upstream, or beat more often")
        if not self.timeouts_s:
            return dict.fromkeys(WATCHED_COMPONENTS, round(budget, 3))
        over = {name: t for name, t in self.timeouts_s.items() if t > budget}
        if over:
            raise ValueError(
                f"watchdog timeouts {over} exceed the fail-safe budget ({why}): units captured after the last "
                "heartbeat would reach the gate before reject-all; lower LINESIGHT_WATCHDOG__TIMEOUTS_S or leave it unset"
            )
        return dict(self.timeouts_s)
