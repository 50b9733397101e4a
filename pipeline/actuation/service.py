"""Reject actuator: every captured unit rejected at the gate unless a pass verdict came in time.

The actuator consumes four topics, all keyed by line. An actuator for every line (no
``services.actuator_line``: the embedded stack, one-host compose) subscribes in its own consumer
group and sees every partition; a per-line actuator (one per line in Kubernetes) `assign()`s only
its line's partition of each (`pipeline.kafka.partitioning`), so it reads nothing of other lines
and no rebalance or other line's fault touches it; it commits under ``<actuator_group>.<line>``.

* **captures** (a frame's headers without its image, from the camera gateway): each captured unit
  is *admitted* to the `RejectScheduler` with its gate deadline from the line's timing model.
  Admitted units are reject-by-default: a unit whose verdict never reaches the actuator before its
  cutoff is fired as ``late``.
* **results** (one `InspectionResult` per unit: pass, reject or review) and **rejects**
  (`RejectCommand`): the verdicts. A reject (or review) is fired when the unit is at the gate,
  whatever the inference latency was; a pass lets it through.
* **heartbeats**: workers report themselves and their Triton probe (to every partition); the
  actuator's own heartbeat (on its line's partition) coming back through the broker proves the
  broker. The `Watchdog` turns silence
  into the ``pipeline_unhealthy`` alarm and reject-all (scheduler and PLC).

On a line that declares stations (``lines.<line>.stations``, docs/actuation.md) a unit is seen by
several cameras: `pipeline.actuation.stations.StationUnits` admits it from its first station frame
(timed from that station's offset), combines the stations' results (a pass is submitted only when
every declared station passed; any reject at once) and, when the gate decided it, the actuator
publishes its one `UnitVerdict` (``linesight.unit-verdicts``) naming the rejecting or missing
stations.

The gate is the PLC behind `pipeline.actuation.plc.gate.OpcUaGate` (``plc.enabled``, the default); the
in-process `SimulatedGate` only when ``plc.enabled = false`` is configured. Every unit's fate is
published as a `GateEventRecord` (ClickHouse ``gate_events``: the per-lot reconciliation), every
fire also as an `Actuation`, every alarm raise and clear as an `AlarmRecord` (``alarms``).
Bad input (malformed command, unknown line, a command for a unit the camera never captured, a
frame without identity) is logged with its reason, dead-lettered where there is a message to
keep, alarmed, and never stops the actuator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, cast

from confluent_kafka import Message

from pipeline.actuation.alarms import AlarmCode, AlarmEvent
from pipeline.actuation.gate import Gate
from pipeline.actuation.loop import ActuationLoop
from pipeline.actuation.scheduler import Action, DecisionKind, FireCause, GateCommand, GateEvent, Outcome
from pipeline.actuation.stations import FrameKind, StationUnits
from pipeline.actuation.timing_model import UnitRef
from pipeline.core.health import HealthState, worker_id
from pipeline.core.metrics import Metrics
from pipeline.core.times import NS_PER_S, now_ns
from pipeline.kafka.clients import RenewingProducer, flush_or_raise, make_consumer
from pipeline.kafka.commit_loop import run_batches
from pipeline.kafka.partitioning import line_assignment, line_partition, line_topics
from pipeline.settings import Settings
from pipeline.settings.actuation import LineTimingSettings
from pipeline.wire.messages import (
    H_CAPTURE_NS,
    H_ENCODER,
    H_LINE,
    H_LOT,
    H_PRODUCT,
    H_STATION,
    H_UNIT,
    MAX_TEXT_CHARS,
    Actuation,
    AlarmRecord,
    FrameMeta,
    GateEventRecord,
    Heartbeat,
    InspectionResult,
    MessageError,
    RejectCommand,
    dead_letter_headers,
    header_purpose,
    header_value,
    safe_unit_id,
    timestamp_problem,
)

log = logging.getLogger(__name__)


class _Seen:
    """Bounded set of (line, unit) keys."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._capacity = capacity

    def add(self, key: tuple[str, str]) -> None:
        self._keys[key] = None
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._keys


class AlarmOutbox:
    """Alarm records kept until the broker has acknowledged them.

    An outage alarm is raised exactly while the broker may be down, and a memory-only broker that
    restarts loses what it had: each record is re-sent (``pump``, from a ticker) until its delivery
    is confirmed. The ``alarms`` table keeps one row per alarm id and revision, so a re-send is
    harmless. A record whose delivery is still unreported stays in flight (not sent twice); the
    producer itself re-sends what a replaced producer had in flight.
    """

    def __init__(self, producer: RenewingProducer, topic: str) -> None:
        self._topic, self._producer = topic, producer
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, bool], AlarmRecord] = {}  # (alarm id, active) -> record
        self._in_flight: set[tuple[str, bool]] = set()

    def publish(self, record: AlarmRecord) -> None:
        with self._lock:
            self._pending[(record.alarm_id, record.active)] = record
        self.pump()

    @property
    def unsent(self) -> int:
        with self._lock:
            return len(self._pending)

    def pump(self, timeout_s: float = 0.0) -> None:
        """Send what is not in flight; serve delivery reports (wait up to ``timeout_s``)."""
        with self._lock:
            due = [(key, rec) for key, rec in self._pending.items() if key not in self._in_flight]
            self._in_flight.update(key for key, _ in due)
        for key, record in due:
            try:
                self._producer.produce(self._topic, key=record.code.encode(), value=record.to_json(),
                                       on_delivery=partial(self._delivered, key))
            except Exception:  # noqa: BLE001 - queue full (broker down a long time): next pump
                with self._lock:
                    self._in_flight.discard(key)
        self._producer.flush(timeout_s) if timeout_s > 0 else self._producer.poll(0)

    def _delivered(self, key: tuple[str, bool], err: object, _msg: object) -> None:
        with self._lock:
            self._in_flight.discard(key)
            if err is None:
                self._pending.pop(key, None)


class Actuator:
    """The actuator's logic, fed batches by the consumer loop. `start` before, `stop` after.

    Its gate events, actuations, heartbeats and alarms go through one `RenewingProducer`: a broker
    that restarted without its state (the embedded Tansu) would otherwise leave them unsent, and
    a unit without a gate record is unaccounted. The consumer commits only after `handle` flushed.
    """

    def __init__(self, settings: Settings, producer: RenewingProducer, gate: Gate | None = None,
                 metrics: Metrics | None = None) -> None:
        """``gate``: None drives the PLC when ``plc.enabled`` (the default), else a simulated gate."""
        self._settings = settings
        self._metrics = metrics if metrics is not None else Metrics()
        self._kafka = settings.kafka
        self._line = settings.services.actuator_line
        self._lines: dict[str, LineTimingSettings] = dict(settings.lines)
        if self._line:
            if self._line not in self._lines:
                raise ValueError(f"services.actuator_line {self._line!r} has no timing in settings.lines")
            self._lines = {self._line: self._lines[self._line]}
        self._producer = producer
        self.name = f"actuator-{worker_id()}"
        # A per-line actuator's heartbeat goes where it reads: its line's partition.
        self._beat_key = (self._line or self.name).encode()
        self._beat_partition = line_partition(self._kafka, self._line) if self._line else None
        self._alarms_out = AlarmOutbox(producer, settings.kafka.topic_alarms)
        wd = settings.watchdog
        self._wd = wd
        # Refuses a timeout that would let a unit reach the gate before reject-all (the numbers).
        timeouts = wd.resolved_timeouts_s(self._lines) if wd.enabled else {}
        self.actuation = ActuationLoop(
            settings.plc,
            self._lines,
            watchdog_timeouts_s=timeouts or None,
            watchdog_clear_after_s=wd.clear_after_s,
            watchdog_interval_s=wd.check_interval_s,
            watchdog_armed=False,  # started when the consumer demonstrably receives (see `_heartbeat`)
            on_event=self._on_gate_event,
            on_alarm=self._on_alarm,
            gate=gate,
        )
        self._lock = threading.Lock()
        self._open: dict[str, tuple[str, int, str]] = {}  # alarm code -> (id, raised_ns, reason)
        self._held: dict[str, float] = {}  # bad-input alarm code -> monotonic time of the last occurrence
        self._admitted = _Seen()
        self._stations = StationUnits(self._lines)
        # Verdicts for units not admitted yet, on encoder lines (their timing needs the frame's count).
        self._parked: OrderedDict[tuple[str, str], tuple[GateCommand, float]] = OrderedDict()
        self.counters: Counter[str] = Counter()
        # (line, unit) -> defect class of its reject verdict, for the actuation record.
        self._defects: OrderedDict[tuple[str, str], str] = OrderedDict()
        # (line, unit) -> purpose of an admitted non-production frame (challenge units), so its
        # gate event and actuation say so and reports leave it out of production counts.
        self._purposes: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._max_beat_age_ns = round(max(timeouts.values(), default=3.0) * NS_PER_S)
        self._assigned_ns: int | None = None
        self.heard_self = False  # our own heartbeat, sent after the assignment, came back

    # ---- lifecycle

    def start(self) -> None:
        self.actuation.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="actuator-ticker", daemon=True)
        self._ticker.start()

    def on_assigned(self) -> None:
        """The consumer has its partitions; once our own heartbeat comes back, it receives."""
        self._assigned_ns = now_ns()
        self.heard_self = False

    def arm(self) -> None:
        """Start the watchdog's clock (every component gets one timeout of grace from now)."""
        self.actuation.arm()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5.0)
        self.actuation.stop()
        # An alarm left open would overlap every later lot: close it, saying why.
        for code in list(self.active_alarms()):
            self._on_alarm(AlarmEvent(code, False, "closed at shutdown: the actuator stopped", now_ns()))
        self._alarms_out.pump(10.0)
        self._producer.flush(10.0)

    # ---- the consumer loop's batch handler

    def handle(self, messages: Sequence[Message]) -> None:
        k = self._kafka
        frames = [m for m in messages if m.topic() == k.topic_captures]
        verdicts = [m for m in messages if m.topic() in (k.topic_results, k.topic_rejects)]
        beats = [m for m in messages if m.topic() == k.topic_heartbeats]
        for m in beats:
            self._heartbeat(m)
        # Admissions first: a batch's verdicts then find their units. One hop each to the loop.
        self._admit_all([ref for m in frames if (ref := self._unit_of(m)) is not None])
        submits: list[tuple[GateCommand, Message | None]] = []
        for m in verdicts:
            command = self._verdict(m)
            if command is not None:
                submits.append((command, m))
        self._submit_all(submits)
        self._expire_parked()
        flush_or_raise(self._producer, 30.0)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            alarms = sorted(self._open)
        return dict(self.counters) | {"alarms": alarms, "fail_safe": self.actuation.fail_safe, "actuator": self.name,
                                      "unsent_alarms": self._alarms_out.unsent}

    # ---- admissions

    def _resolve_line(self, line: str) -> str:
        """A unit without a line belongs to this actuator's line, or the only configured one."""
        if line:
            return line
        if self._line:
            return self._line
        return next(iter(self._lines)) if len(self._lines) == 1 else ""

    def _unit_of(self, m: Message) -> UnitRef | None:
        """The captured unit a capture (a frame's headers) stands for (None: not this actuator's,
        or no identity)."""
        headers = m.headers() or []
        broken = False
        try:
            meta = FrameMeta.from_headers(headers, ref_ns=_broker_ns(m))
            ref = UnitRef(meta.line, meta.unit_id, meta.capture_ns, meta.encoder_count, meta.lot)
        except MessageError as exc:
            fallback = self._fallback_unit(m, str(exc))
            if fallback is None:
                return None
            ref, broken = fallback, True
        if self._line and ref.line != self._line:
            return None
        purpose = header_purpose(cast("list[tuple[str, bytes | None]]", headers))
        if purpose:
            self._purposes[(ref.line, ref.unit_id)] = purpose
            if len(self._purposes) > 100_000:
                self._purposes.popitem(last=False)
        if self._stations.declares(ref.line):
            return self._station_frame(m, ref, broken)
        return ref

    def _station_frame(self, m: Message, ref: UnitRef, broken: bool) -> UnitRef | None:
        """A multi-station line's frame: the unit's first is admitted, timed from its station;
        other stations' frames of a known unit are no second capture; an undeclared station is
        bad input. A frame with broken metadata and no usable station is still a unit on the
        belt: admitted as such frames are on any line (the worker fail-safe rejects it)."""
        headers = cast("list[tuple[str, bytes | None]]", m.headers() or [])
        station = header_value(headers, H_STATION)
        if broken and self._stations.station(ref.line, station) is None:
            return ref
        kind = self._stations.frame(ref.line, ref.unit_id, station, ref.capture_ns,
                                    header_value(headers, H_PRODUCT), ref.lot)
        self.counters[f"station_frame_{kind}"] += 1
        if kind is FrameKind.UNDECLARED:
            self._refused(m, f"frame of unit {ref.unit_id!r} from station {station[:40]!r}, which line {ref.line!r} "
                             f"does not declare (stations: {', '.join(self._stations.names(ref.line))})")
            return None
        if kind in (FrameKind.OTHER_STATION, FrameKind.REDELIVERED):
            return None
        spec = self._stations.station(ref.line, station)
        assert spec is not None  # declared (not UNDECLARED)
        return replace(ref, offset_mm=spec.offset_mm)

    def _admit_all(self, refs: list[UnitRef]) -> None:
        unparked: list[tuple[GateCommand, Message | None]] = []
        for ref, decision in zip(refs, self.actuation.admit_many(refs), strict=True):
            self.counters[f"admit_{decision.kind}"] += 1
            if decision.kind is DecisionKind.CONFLICT:
                self._bad_input(AlarmCode.DUPLICATE_UNIT, f"line {ref.line!r}: {decision.reason}")
            if decision.kind is DecisionKind.REFUSED:
                self._bad_input(AlarmCode.UNTIMED_UNIT, f"captured unit {ref.unit_id} on line {ref.line!r} cannot "
                                f"be timed: {decision.reason}")
                continue
            key = (ref.line, ref.unit_id)
            self._admitted.add(key)
            parked = self._parked.pop(key, None)
            if parked is not None:
                unparked.append((parked[0], None))
        self._submit_all(unparked)

    def _fallback_unit(self, m: Message, why: str) -> UnitRef | None:
        """A frame with broken metadata is still a unit on the belt: admit what its capture does
        carry (unit id from its header, as the worker's fail-safe reject names it: `safe_unit_id`;
        its line from the header, else the capture's key, else the actuator's; its capture time if
        plausible, else the record's time)."""
        # A consumed record's headers are (name, bytes or None) pairs; confluent-kafka types them
        # with the wider produce-side union (dict, str values).
        headers = cast("list[tuple[str, bytes | None]]", m.headers() or [])
        raw_unit = header_value(headers, H_UNIT)
        unit = safe_unit_id(raw_unit) if raw_unit else ""
        # Bounded as the worker's fail-safe result bounds them: the gate event must stay publishable.
        line = header_value(headers, H_LINE) or (m.key() or b"").decode("utf-8", "replace")
        line = self._resolve_line(line[:MAX_TEXT_CHARS])
        broker = _broker_ns(m)
        try:
            capture = int(header_value(headers, H_CAPTURE_NS)[:24])
        except ValueError:
            capture = 0
        if timestamp_problem(H_CAPTURE_NS, capture, broker) is not None:
            capture = broker
        try:
            encoder: int | None = int(header_value(headers, H_ENCODER))
        except ValueError:
            encoder = None
        if not unit or not line:
            self._bad_input(
                AlarmCode.UNTIMED_UNIT,
                f"frame at {m.topic()}:{m.partition()}:{m.offset()} has no usable unit id or line ({why}): "
                "it cannot be tracked to the gate",
            )
            return None
        log.warning("frame of unit %s has bad metadata (%s): admitted on line %s", unit, why, line)
        self.counters["admit_bad_metadata"] += 1
        return UnitRef(line, unit, capture, encoder, header_value(headers, H_LOT)[:MAX_TEXT_CHARS])

    # ---- verdicts

    def _verdict(self, m: Message) -> GateCommand | None:
        """The gate command a result or reject command stands for (None: refused, parked, not ours)."""
        verdict: InspectionResult | RejectCommand
        try:
            if m.topic() == self._kafka.topic_results:
                verdict = InspectionResult.from_json(m.value())
                if verdict.verdict not in ("pass", "reject", "review"):
                    raise MessageError(f"unknown verdict {verdict.verdict!r}")
                action = Action.PASS if verdict.verdict == "pass" else Action.REJECT
            else:
                verdict, action = RejectCommand.from_json(m.value()), Action.REJECT
        except MessageError as exc:
            self._refused(m, f"malformed {m.topic()} message: {exc}")
            return None
        line = verdict.line
        if isinstance(line, str) and not line:
            line = self._resolve_line("")
        if self._line and line != self._line:
            return None
        given: dict[str, Any] = {"line": line, "action": action, "encoder_count": None}
        defect, offset_mm = str(verdict.defect)[:100], 0.0
        if self._stations.declares(line):
            station = self._station_verdict(m, verdict, line)
            if station is None:
                return None
            given["action"], given["cause"], defect, offset_mm = station
        try:
            command = GateCommand.parse(verdict, **given)
        except ValueError as exc:
            self.counters[f"verdict_{DecisionKind.REFUSED}"] += 1
            self._refused(m, f"refused command for unit {verdict.unit_id!r} line {line!r}: malformed command: {exc}")
            return None
        if offset_mm:
            command = replace(command, unit=replace(command.unit, offset_mm=offset_mm))
        key = (command.unit.line, command.unit.unit_id)
        if command.action is Action.REJECT:
            self._defects[key] = defect
            if len(self._defects) > 100_000:
                self._defects.popitem(last=False)
        timing = self._lines.get(command.unit.line)
        if timing is not None and timing.encoder_mode and key not in self._admitted:
            # Encoder-timed: the deadline needs the frame's count; wait (bounded) for the frame.
            self._parked[key] = (command, time.monotonic())
            self.counters["verdicts_parked"] += 1
            return None
        return command

    def _station_verdict(
        self, m: Message, verdict: InspectionResult | RejectCommand, line: str
    ) -> tuple[Action, str, str, float] | None:
        """On a multi-station line: (action, cause, defect, station offset) to submit, or None while
        the unit waits for its other stations (or the result is refused: undeclared station)."""
        if isinstance(verdict, RejectCommand):  # the gateway's or a worker's: rejects as on any line
            if verdict.cause == "failsafe":
                self._stations.command(line, verdict.unit_id, verdict.reason)
            spec = self._stations.station_of_camera(line, verdict.camera)
            return Action.REJECT, verdict.cause, str(verdict.defect)[:100], spec.offset_mm if spec else 0.0
        spec = self._stations.station(line, verdict.station)
        if spec is None:
            self._refused(m, f"result of unit {verdict.unit_id!r} from station {verdict.station[:40]!r}, which line "
                             f"{line!r} does not declare (stations: {', '.join(self._stations.names(line))})")
            return None
        combined = self._stations.result(verdict)
        if combined is None:
            self.counters["station_results_held"] += 1
            return None
        action = Action.PASS if combined.verdict == "pass" else Action.REJECT
        return action, combined.cause, combined.defect[:100], spec.offset_mm

    def _submit_all(self, submits: list[tuple[GateCommand, Message | None]]) -> None:
        decisions = self.actuation.submit_many([command for command, _ in submits])
        for (command, m), decision in zip(submits, decisions, strict=True):
            self.counters[f"verdict_{decision.kind}"] += 1
            if decision.kind is DecisionKind.REFUSED:
                self._refused(
                    m, f"refused command for unit {command.unit.unit_id!r} line {command.unit.line!r}: {decision.reason}"
                )

    def _expire_parked(self) -> None:
        hold = self._wd.bad_input_hold_s
        now = time.monotonic()
        while self._parked:
            key, (_, at) = next(iter(self._parked.items()))
            if now - at < hold:
                break
            self._parked.popitem(last=False)
            self._bad_input(
                AlarmCode.UNKNOWN_UNIT,
                f"verdict for unit {key[1]} on encoder-timed line {key[0]} whose frame never arrived "
                f"within {hold:.0f} s: the camera did not capture it",
            )

    def _refused(self, m: Message | None, reason: str) -> None:
        self._bad_input(AlarmCode.BAD_COMMAND, reason)
        if m is None:
            return
        self.counters["dead_lettered"] += 1
        source = f"{m.topic()}:{m.partition()}:{m.offset()}"
        self._producer.produce(
            self._kafka.topic_deadletter,
            key=m.key(),
            value=m.value(),
            headers=dead_letter_headers(
                cast("list[tuple[str, bytes | None]] | None", m.headers()), reason, "actuator", source
            ),
        )

    # ---- heartbeats

    def _heartbeat(self, m: Message) -> None:
        try:
            hb = Heartbeat.from_json(m.value())
        except MessageError as exc:
            self.counters["bad_heartbeats"] += 1
            log.warning("ignoring bad heartbeat at %s:%s:%s: %s", m.topic(), m.partition(), m.offset(), exc)
            return
        now = now_ns()
        if not isinstance(hb.sent_ns, int) or now - hb.sent_ns > self._max_beat_age_ns:
            return  # old news: proves nothing about now
        at = min(hb.sent_ns, now)
        if hb.kind == "worker":
            self.actuation.beat("worker", at)
            if hb.triton_ready:
                self.actuation.beat("triton", at)
        elif hb.kind == "actuator" and hb.source == self.name:
            self.actuation.beat("broker", at)  # our own beat made the round trip through the broker
            if not self.heard_self and self._assigned_ns is not None and hb.sent_ns >= self._assigned_ns:
                self.heard_self = True
                self.arm()  # heartbeats reach us now: silence from here on means something

    def _tick_loop(self) -> None:
        interval = self._wd.heartbeat_interval_s
        while not self._stop.wait(interval):
            try:
                beat = Heartbeat(self.name, "actuator", now_ns())
                self._producer.produce(self._kafka.topic_heartbeats, key=self._beat_key, value=beat.to_json(),
                                       partition=self._beat_partition)
                self._producer.poll(0)
                self._release_held()
                self._alarms_out.pump()
            except Exception:  # noqa: BLE001 - a full queue (broker down) must not end the ticker
                log.exception("actuator heartbeat failed")

    # ---- gate events and alarms (called on the actuation loop's thread)

    def _on_gate_event(self, e: GateEvent) -> None:
        t = e.timing
        outcome, reason = e.outcome, e.reason
        if outcome is Outcome.FIRED and e.fired_ns is not None and e.fired_ns > t.window_end_ns:
            # The PLC confirmed, but fired after the unit had left the gate (fires queue behind
            # each other on one gate): the push hit the belt, not the unit.
            outcome = Outcome.MISSED
            reason = (f"the PLC fired {(e.fired_ns - t.window_end_ns) / 1e6:.1f} ms after the gate window closed "
                      f"(scheduler acted {(e.acted_ns - t.fire_at_ns) / 1e6:.1f} ms after the fire time)")
        self.counters[f"gate_{outcome}_{e.cause}"] += 1
        self._observe(e, outcome)
        unit_verdict = None
        purpose = self._purposes.pop((e.line, e.unit_id), "")
        if self._stations.declares(e.line):  # one verdict per unit, naming its stations
            unit_verdict = self._stations.close(e.line, e.unit_id, released=outcome is Outcome.PASSED,
                                                cause=str(e.cause), decided_ns=e.acted_ns, gate_reason=reason)
            reason = unit_verdict.reason
        record = GateEventRecord(
            unit_id=e.unit_id, line=e.line, lot=e.lot, outcome=str(outcome), cause=str(e.cause),
            admitted=e.admitted, deadline_ns=t.deadline_ns, fire_at_ns=t.fire_at_ns, cutoff_ns=t.verdict_cutoff_ns,
            window_start_ns=t.window_start_ns, window_end_ns=t.window_end_ns, acted_ns=e.acted_ns,
            actuator=self.name, verdict_ns=e.verdict_ns, fired_ns=e.fired_ns, verdict=e.action or "",
            reason=reason, capture_ns=e.capture_ns, purpose=purpose,
        )
        key = e.unit_id.encode()
        try:
            self._producer.produce(self._kafka.topic_gate_events, key=key, value=record.to_json())
            if unit_verdict is not None:
                self._producer.produce(self._kafka.topic_unit_verdicts, key=key, value=unit_verdict.to_json())
            if outcome is Outcome.FIRED:
                actuation = Actuation(
                    unit_id=e.unit_id, line=e.line, lot=e.lot, cause=str(e.cause),
                    defect=self._defects.pop((e.line, e.unit_id), "") or "uninspected",
                    capture_ns=e.capture_ns or t.deadline_ns, command_issued_ns=e.verdict_ns or e.acted_ns,
                    fired_ns=e.fired_ns or e.acted_ns, actuator=self.name, purpose=purpose,
                )
                self._producer.produce(self._kafka.topic_actuations, key=key, value=actuation.to_json())
        except Exception:  # noqa: BLE001 - BufferError with the broker down: logged, the gate acted
            log.exception("could not publish the gate event of %s/%s", e.line, e.unit_id)
        if outcome in (Outcome.FIRE_FAILED, Outcome.MISSED):
            self._bad_input(AlarmCode.NOT_REJECTED, f"unit {e.unit_id} on line {e.line} may have passed the gate "
                            f"unrejected ({outcome}: {reason}); quarantine lot {e.lot or '?'}")
        if not e.admitted:
            self._bad_input(AlarmCode.UNKNOWN_UNIT, f"command for unit {e.unit_id} on line {e.line} that the camera "
                            f"never captured ({e.outcome} at its computed gate time)")

    def _observe(self, e: GateEvent, outcome: Outcome) -> None:
        """The gate event in the metrics, and a unit's fail-safe fate in the log with its id and lot."""
        m = self._metrics
        m.counter("linesight_gate_events").labels(e.line, str(outcome), str(e.cause)).inc()
        if e.margin_ns is not None:
            m.histogram("linesight_gate_margin_seconds").labels(e.line).observe(e.margin_ns / NS_PER_S)
        unit = {"unit_id": e.unit_id, "lot": e.lot, "line": e.line}
        if outcome is Outcome.FIRED and e.cause != FireCause.MODEL:
            m.counter("linesight_failsafe_rejects").labels(e.line, str(e.cause)).inc()
            log.info("unit %s fail-safe rejected at the gate (%s)", e.unit_id, e.cause, extra=unit)
        elif outcome is Outcome.FIRED:
            log.debug("unit %s rejected at the gate", e.unit_id, extra=unit)
        elif outcome in (Outcome.FIRE_FAILED, Outcome.MISSED):
            log.warning("unit %s not rejected at the gate (%s)", e.unit_id, outcome, extra=unit)

    def _on_alarm(self, event: AlarmEvent) -> None:
        with self._lock:
            if event.active:
                if event.code in self._open:
                    return
                alarm_id = f"{self.name}:{event.code}:{event.at_ns}"
                self._open[event.code] = (alarm_id, event.at_ns, event.reason)
                record = AlarmRecord(alarm_id, event.code, True, event.at_ns, event.reason, self.name)
            else:
                opened = self._open.pop(event.code, None)
                if opened is None:
                    return
                alarm_id, raised_ns, reason = opened
                record = AlarmRecord(
                    alarm_id, event.code, False, raised_ns, reason, self.name,
                    cleared_ns=event.at_ns, clear_reason=event.reason,
                )
        (log.error if event.active else log.warning)(
            "alarm %s %s: %s", event.code, "RAISED" if event.active else "cleared", event.reason
        )
        self._alarms_out.publish(record)  # kept and re-sent until the broker has it

    def _bad_input(self, code: str, reason: str) -> None:
        """Log, count, and hold the code's alarm until no occurrence for ``bad_input_hold_s``."""
        log.warning("%s: %s", code, reason)
        self.counters[code] += 1
        with self._lock:
            self._held[code] = time.monotonic()
        self._on_alarm(AlarmEvent(code, True, reason, now_ns()))

    def _release_held(self) -> None:
        hold = self._wd.bad_input_hold_s
        now = time.monotonic()
        with self._lock:
            expired = [code for code, at in self._held.items() if now - at >= hold]
            for code in expired:
                del self._held[code]
        for code in expired:
            self._on_alarm(AlarmEvent(code, False, f"no further occurrence for {hold:.0f} s", now_ns()))

    def active_alarms(self) -> Mapping[str, str]:
        with self._lock:
            return {code: reason for code, (_, _, reason) in self._open.items()}


def _broker_ns(m: Message) -> int:
    """The record's broker (create or log-append) time in epoch ns; now when it has none."""
    _, ts_ms = m.timestamp()
    return ts_ms * 1_000_000 if ts_ms and ts_ms > 0 else now_ns()


class _ArmingHealth(HealthState):
    """Readiness of the actuator: partitions assigned AND its own heartbeat, sent after the
    assignment, came back through the broker (so its consume positions are set: nothing the
    line publishes from now on is missed). The assignment also starts the watchdog's clock."""

    def __init__(self, inner: HealthState, actuator: Actuator) -> None:
        self._inner, self._actuator = inner, actuator
        self._assigned = False

    def tick(self, **counters: Any) -> None:
        # The loop ticks on every poll, batch or not: /healthz shows fail-safe while the broker is down.
        snap = self._actuator.snapshot()
        self._inner.tick(**(snap | counters))
        self.metrics.gauge("linesight_failsafe_active").set(int(bool(snap["fail_safe"])))
        self.metrics.gauge("linesight_alarms_active").set(len(snap["alarms"]))
        if self._assigned and self._actuator.heard_self and not self._inner.snapshot()["ready"]:
            self._inner.set_ready(True)

    def set_ready(self, ready: bool) -> None:
        self._assigned = ready
        if ready:
            self._actuator.on_assigned()
        else:
            self._inner.set_ready(False)

    def snapshot(self) -> dict[str, Any]:
        return self._inner.snapshot()

    @property
    def service(self) -> str:  # type: ignore[override]
        return self._inner.service

    @property
    def metrics(self) -> Metrics:  # type: ignore[override]
        return self._inner.metrics


def actuator_group(settings: Settings) -> str:
    """The consumer group an actuator commits under: a per-line one's own (lines may share a
    partition, and two actuators committing one partition in one group would undo each other)."""
    svc = settings.services
    return f"{svc.actuator_group}.{svc.actuator_line}" if svc.actuator_line else svc.actuator_group


def run_actuator(
    settings: Settings, stop: threading.Event, health: HealthState, gate: Gate | None = None
) -> None:
    """Consume captures, verdicts and heartbeats until `stop` (a per-line actuator: its line's
    partitions only); drive the gate (None: the PLC when ``plc.enabled``, else the in-process
    simulated gate)."""
    producer = RenewingProducer(settings.kafka, "linesight-actuator")
    actuator = Actuator(settings, producer, gate, metrics=health.metrics)
    actuator.start()
    k = settings.kafka
    # Units captured before this actuator group's first start are long past the gate: start at
    # the end. After a restart the committed offsets are used.
    # A verdict's time to the actuator eats into its margin: fetch without waiting at the broker
    # (Tansu holds a fetch for fetch.wait.max.ms even when data is there).
    line = settings.services.actuator_line
    consumer = make_consumer(settings.kafka, actuator_group(settings), "linesight-actuator",
                             **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 10})
    armed = _ArmingHealth(health, actuator)

    def handle(messages: Sequence[Message]) -> None:
        actuator.handle(messages)
        health.tick(**actuator.snapshot())

    try:
        run_batches(
            consumer, line_topics(k), handle, armed, stop, assignment=line_assignment(k, line) if line else None,
            max_batch=500, poll_timeout_s=0.02, group=actuator_group(settings),
        )
    finally:
        actuator.stop()
