"""`RejectScheduler`: fires the gate exactly when each unit is in front of it.

It keeps every known unit until its fire time (from `pipeline.actuation.timing_model`) and then
does exactly one thing: fire (verdict reject; no verdict in time = ``late``; fail-safe active)
or let it pass (on a positive-release gate: release it; a unit not released is rejected). Units are reject-by-default once admitted: a unit whose verdict never comes is
rejected, and any reject for a unit wins over an earlier pass until the unit is at the gate.
Duplicate commands and redelivered captures are idempotent; a second capture of a known unit id
(another capture time) is a `CONFLICT`: both units are rejected. Unknown lines and malformed
commands are refused with a reason (`Decision`), never raised. Every unit ends in exactly one
`GateEvent`.

Times are epoch nanoseconds (the frames' ``capture_ns``) read from an injectable `Clock`, so
tests drive time deterministically with `ManualClock`.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.actuation.clock import Clock, SystemClock
from pipeline.actuation.gate import FireResult, Gate
from pipeline.actuation.timing_model import GateTiming, LineTimingModel, UnitRef
from pipeline.core.aio import cancel_and_wait
from pipeline.core.times import NS_PER_MS, NS_PER_S
from pipeline.settings.actuation import LineTimingSettings
from pipeline.wire.messages import MAX_UNIT_ID_CHARS, unit_id_problem

log = logging.getLogger(__name__)


class Action(StrEnum):
    REJECT = "reject"
    PASS = "pass"


class FireCause(StrEnum):
    """Why the gate fired: a model reject, or one of the fail-safe reasons."""

    MODEL = "model"  # inspected and rejected
    LATE = "late"  # no verdict at the actuator before the unit's cutoff
    FAILSAFE = "failsafe"  # pipeline unhealthy (watchdog) or the upstream's own fail-safe command


class DecisionKind(StrEnum):
    SCHEDULED = "scheduled"  # reject will fire at the unit's fire time
    ACCEPTED = "accepted"  # admitted, or a pass verdict recorded
    DUPLICATE = "duplicate"  # the unit already has this (or a stronger) decision: nothing new
    CONFLICT = "conflict"  # a second capture of a known unit id: both units rejected, alarm
    LATE = "late"  # verdict after the cutoff: the unit is fail-safe rejected (if still possible)
    REFUSED = "refused"  # unknown line, malformed command, unusable timing


@dataclass(frozen=True)
class Decision:
    """The scheduler's answer to one command: never an exception."""

    kind: DecisionKind
    line: str
    unit_id: str
    reason: str = ""
    timing: GateTiming | None = None


class Outcome(StrEnum):
    FIRED = "fired"
    PASSED = "passed"
    FIRE_FAILED = "fire_failed"  # the gate did not confirm: the unit may have passed, alarm!
    MISSED = "missed"  # the unit's gate window had closed before it could be fired: alarm!


@dataclass(frozen=True)
class GateEvent:
    """What physically happened to one unit at the gate: exactly one per known unit."""

    line: str
    unit_id: str
    lot: str
    outcome: Outcome
    cause: str  # FireCause value when fired; "model" when passed on its verdict
    timing: GateTiming
    verdict_ns: int | None  # when the verdict reached the scheduler (None: never, in time)
    acted_ns: int  # when the scheduler fired/passed it
    fired_ns: int | None = None  # the gate's own fire time when it reports one (PLC time)
    reason: str = ""
    admitted: bool = True  # seen at capture (False: known only from a verdict or command)
    action: str | None = None  # the verdict received in time ("reject"/"pass"), None if none
    capture_ns: int = 0

    @property
    def margin_ns(self) -> int | None:
        """Verdict-to-fire-time margin (positive: in time)."""
        return None if self.verdict_ns is None else self.timing.fire_at_ns - self.verdict_ns

    @property
    def in_window(self) -> bool:
        return self.timing.window_start_ns <= self.acted_ns <= self.timing.window_end_ns


@dataclass(frozen=True)
class GateCommand:
    """A verdict for one unit, validated. Build with `GateCommand.parse` from anything."""

    unit: UnitRef
    action: Action = Action.REJECT
    cause: str = FireCause.MODEL

    @classmethod
    def parse(cls, raw: Any, **given: Any) -> GateCommand:
        """From a `GateCommand`, a mapping, or an object with the fields (e.g. `RejectCommand`);
        fields in ``given`` take precedence over the ones of ``raw``.

        Raises `ValueError` with the reason; the scheduler turns it into a refusal.
        """
        if isinstance(raw, GateCommand) and not given:
            return raw

        def get(name: str, default: Any = None) -> Any:
            if name in given:
                return given[name]
            if isinstance(raw, Mapping):
                return raw.get(name, default)
            return getattr(raw, name, default)

        unit_id, line, capture_ns = get("unit_id"), get("line"), get("capture_ns")
        if not isinstance(unit_id, str) or not unit_id.strip():
            raise ValueError("command without a unit id")
        if problem := unit_id_problem(unit_id):  # the gate could not be told to remove it
            raise ValueError(problem)
        if not isinstance(line, str) or not line.strip():
            raise ValueError("command without a line")
        if isinstance(capture_ns, bool) or not isinstance(capture_ns, int) or capture_ns <= 0:
            raise ValueError(f"bad capture_ns {capture_ns!r}")
        count = get("encoder_count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise ValueError(f"bad encoder_count {count!r}")
        lot = get("lot", "") or ""
        try:
            action = Action(get("action", Action.REJECT))
        except ValueError:
            raise ValueError(f"unknown action {get('action')!r}") from None
        cause = get("cause", FireCause.MODEL) or FireCause.MODEL
        if cause not in set(FireCause):
            raise ValueError(f"unknown cause {cause!r}")
        return cls(UnitRef(line, unit_id, capture_ns, count, str(lot)), action, str(cause))


@dataclass
class _Pending:
    ref: UnitRef
    timing: GateTiming
    action: Action | None = None
    cause: str = FireCause.MODEL
    verdict_ns: int | None = None
    admitted: bool = False
    reason: str = ""  # why a fail-safe reject was forced (e.g. a duplicate unit id)


@dataclass
class SchedulerStats:
    decisions: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # "fired:late", "passed:model", ...


class RejectScheduler:
    """Fires each reject when its unit is at the gate; fail-safe for late and unknown verdicts.

    Call `admit` for every unit the camera captures (reject-by-default: without a verdict in
    time it is fired as ``late``) and `submit` for every verdict. Both are plain methods for the
    event-loop thread and never raise. `run` is the loop (or use `start`/`stop`).
    """

    def __init__(
        self,
        lines: Mapping[str, LineTimingSettings],
        gate: Gate,
        *,
        clock: Clock | None = None,
        on_event: Callable[[GateEvent], None] | None = None,
        on_refusal: Callable[[Decision], None] | None = None,
        memory: int = 100_000,
        max_future_skew_s: float = 5.0,
    ) -> None:
        self._models = {name: LineTimingModel(name, s) for name, s in lines.items()}
        self._gate = gate
        self._clock: Clock = clock or SystemClock()
        self._on_event = on_event
        self._on_refusal = on_refusal
        self._memory = memory
        self._max_skew_ns = round(max_future_skew_s * NS_PER_S)
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._heap: list[tuple[int, int, tuple[str, str]]] = []
        self._seq = 0
        # finished units -> (whether they had a verdict in time, capture time): duplicate vs late
        # answers, and a redelivered capture vs a second capture of the same unit id
        self._done: OrderedDict[tuple[str, str], tuple[bool, int]] = OrderedDict()
        self._dirty_lines: set[str] = set()
        self._wake = asyncio.Event()
        self._fire_tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.fail_safe = False
        self.fail_safe_reason = ""
        self.stats = SchedulerStats()

    # ---- commands (sync, never raise)

    def admit(self, unit: UnitRef) -> Decision:
        """A unit was captured: it will be rejected at the gate unless a pass verdict arrives."""
        try:
            key = (unit.line, unit.unit_id)
            pending = self._pending.get(key)
            if pending is not None and not pending.admitted:
                pending.admitted = True  # its verdict came first: now the camera saw it too
                return self._decide(DecisionKind.ACCEPTED, unit, "admitted after its verdict", pending.timing)
            if pending is not None or key in self._done:
                first = pending.ref.capture_ns if pending is not None else self._done[key][1]
                if unit.capture_ns == first:  # the same capture, redelivered
                    return self._decide(DecisionKind.DUPLICATE, unit, "unit already known")
                return self._second_capture(unit, pending, first)
            model = self._model_for(unit)
            if isinstance(model, Decision):
                return model
            tracked = self._track(model, unit)
            tracked.admitted = True
            return self._decide(DecisionKind.ACCEPTED, unit, "admitted", tracked.timing)
        except Exception as exc:  # a bug here must not stop the line's scheduler
            log.exception("admit failed for %r", unit)
            return self._refuse(getattr(unit, "line", ""), getattr(unit, "unit_id", ""), f"internal error: {exc}")

    def _second_capture(self, unit: UnitRef, first: _Pending | None, first_ns: int) -> Decision:
        """Another unit under a known unit id: no verdict can tell which unit it is about, so the
        first (if not yet at the gate) and this one are both rejected. This one is tracked under
        the surrogate id ``<unit id>~<capture ns>`` (a redelivery of it is then a duplicate)."""
        reason = (f"unit id {unit.unit_id!r} captured again at {unit.capture_ns} "
                  f"(first at {first_ns}): both units rejected")
        if first is not None:
            first.action, first.cause, first.reason = Action.REJECT, FireCause.FAILSAFE, reason
        surrogate = f"{unit.unit_id[: MAX_UNIT_ID_CHARS - 21]}~{unit.capture_ns}"
        second = UnitRef(unit.line, surrogate, unit.capture_ns, unit.encoder_count, unit.lot)
        decision = self.admit(second)
        pending = self._pending.get((unit.line, surrogate))
        if decision.kind is DecisionKind.ACCEPTED and pending is not None:
            pending.action, pending.cause, pending.reason = Action.REJECT, FireCause.FAILSAFE, reason
        elif decision.kind is DecisionKind.REFUSED:
            reason += f"; the second cannot be tracked: {decision.reason}"
        elif decision.kind is DecisionKind.DUPLICATE:
            return decision  # this second capture was itself redelivered
        return self._decide(DecisionKind.CONFLICT, unit, reason, decision.timing)

    def submit(self, raw: Any) -> Decision:
        """A verdict (reject or pass) for a unit; see `GateCommand.parse` for accepted shapes."""
        try:
            try:
                command = GateCommand.parse(raw)
            except ValueError as exc:
                line = _field(raw, "line")
                return self._refuse(line, _field(raw, "unit_id"), f"malformed command: {exc}")
            return self._submit(command)
        except Exception as exc:
            log.exception("submit failed for %r", raw)
            return self._refuse(_field(raw, "line"), _field(raw, "unit_id"), f"internal error: {exc}")

    def observe_encoder(self, line: str, count: int, t_ns: int) -> None:
        """A conveyor encoder reading (from frames or the PLC): re-times the line's pending units."""
        model = self._models.get(line)
        if model is None or not model.encoder_mode:
            return
        model.observe_encoder(count, t_ns)
        self._dirty_lines.add(line)
        self._wake.set()

    def set_fail_safe(self, active: bool, reason: str = "") -> None:
        """While active, every unit reaching the gate is rejected, pass verdicts included."""
        if active != self.fail_safe:
            log.warning("reject scheduler fail-safe %s: %s", "ON" if active else "off", reason)
        self.fail_safe = active
        self.fail_safe_reason = reason if active else ""

    # ---- loop

    async def run(self) -> None:
        while True:
            self._retime_dirty()
            now = self._clock.now_ns()
            self._act_due(now)
            next_t = self._next_fire_at()
            if next_t is not None and any(m.encoder_mode for m in self._models.values()) and self._pending:
                recheck = min(
                    round(m.settings.encoder_recheck_ms * NS_PER_MS) for m in self._models.values() if m.encoder_mode
                )
                next_t = min(next_t, now + recheck)
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            waits: set[asyncio.Future[Any]] = {waiter}
            if next_t is not None:
                waits.add(asyncio.ensure_future(self._clock.sleep_until(next_t)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="reject-scheduler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._fire_tasks:
            await asyncio.gather(*self._fire_tasks, return_exceptions=True)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def firing(self) -> int:
        return len(self._fire_tasks)

    def model(self, line: str) -> LineTimingModel | None:
        return self._models.get(line)

    # ---- internals

    def _submit(self, command: GateCommand) -> Decision:
        unit = command.unit
        key = (unit.line, unit.unit_id)
        now = self._clock.now_ns()
        if key in self._done:
            if self._done[key][0]:
                return self._decide(DecisionKind.DUPLICATE, unit, "unit already acted on")
            return self._decide(DecisionKind.LATE, unit, "verdict after the unit's deadline; it was fail-safe rejected")
        pending = self._pending.get(key)
        if pending is None:
            model = self._model_for(unit)
            if isinstance(model, Decision):
                return model
            pending = self._track(model, unit)
        if pending.action is not None:
            if command.action is Action.REJECT and pending.action is Action.PASS:
                # When in doubt, reject: any reject wins over a pass while the unit is not yet at
                # the gate (still pending), even after the cutoff (firing is at the fire time).
                pending.action, pending.cause = Action.REJECT, command.cause
                return self._decide(DecisionKind.SCHEDULED, unit, "pass upgraded to reject", pending.timing)
            return self._decide(DecisionKind.DUPLICATE, unit, f"unit already has a {pending.action} verdict", pending.timing)
        if now > pending.timing.verdict_cutoff_ns:
            return self._decide(DecisionKind.LATE, unit, self._late_reason(pending, now), pending.timing)
        pending.action, pending.cause, pending.verdict_ns = command.action, command.cause, now
        kind = DecisionKind.SCHEDULED if command.action is Action.REJECT else DecisionKind.ACCEPTED
        return self._decide(kind, unit, "", pending.timing)

    def _late_reason(self, pending: _Pending, now: int) -> str:
        over_ms = (now - pending.timing.verdict_cutoff_ns) / NS_PER_MS
        if now <= pending.timing.window_end_ns:
            return f"verdict {over_ms:.1f} ms after the cutoff; unit is fail-safe rejected as late"
        return f"verdict {over_ms:.1f} ms after the cutoff and past the gate window"

    def _model_for(self, unit: UnitRef) -> LineTimingModel | Decision:
        model = self._models.get(unit.line)
        if model is None:
            return self._refuse(unit.line, unit.unit_id, f"unknown line {unit.line!r}")
        if unit.capture_ns > self._clock.now_ns() + self._max_skew_ns:
            return self._refuse(unit.line, unit.unit_id, "capture time is in the future (clock skew?)")
        if model.encoder_mode and unit.encoder_count is None:
            return self._refuse(unit.line, unit.unit_id, f"line {unit.line!r} is encoder-timed; command has no encoder_count")
        return model

    def _track(self, model: LineTimingModel, unit: UnitRef) -> _Pending:
        if unit.encoder_count is not None:
            model.observe_encoder(unit.encoder_count, unit.capture_ns)
        pending = _Pending(unit, model.timing(unit))
        key = (unit.line, unit.unit_id)
        self._pending[key] = pending
        self._push(pending.timing.fire_at_ns, key)
        return pending

    def _push(self, fire_at: int, key: tuple[str, str]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (fire_at, self._seq, key))
        self._wake.set()

    def _retime_dirty(self) -> None:
        if not self._dirty_lines:
            return
        lines, self._dirty_lines = self._dirty_lines, set()
        for key, p in self._pending.items():
            if key[0] in lines:
                new = self._models[key[0]].timing(p.ref)
                if new.fire_at_ns != p.timing.fire_at_ns:
                    p.timing = new
                    self._push(new.fire_at_ns, key)

    def _next_fire_at(self) -> int | None:
        while self._heap:
            fire_at, _, key = self._heap[0]
            p = self._pending.get(key)
            if p is not None and p.timing.fire_at_ns == fire_at:
                return fire_at
            heapq.heappop(self._heap)  # stale entry: unit done or re-timed
        return None

    def _act_due(self, now: int) -> None:
        while (nxt := self._next_fire_at()) is not None and nxt <= now:
            _, _, key = heapq.heappop(self._heap)
            p = self._pending.pop(key)
            self._remember(key, p.verdict_ns is not None, p.ref.capture_ns)
            must_fire = p.action is not Action.PASS or self.fail_safe
            if self._gate.positive_release and now > p.timing.window_end_ns:
                # Too late to act: a release now could let the next unit through; the diverter
                # rejects this one by default, which is what a must-fire unit needed anyway.
                late_ms = (now - p.timing.window_end_ns) / NS_PER_MS
                cause = self._fire_cause(p) if must_fire else FireCause.FAILSAFE
                reason = f"gate window closed {late_ms:.1f} ms before acting: not released, rejected by default"
                log.warning("unit %s/%s: %s", p.ref.line, p.ref.unit_id, reason)
                self._emit(GateEvent(p.ref.line, p.ref.unit_id, p.ref.lot, Outcome.FIRED, cause, p.timing, p.verdict_ns, now, None,
                                     reason, p.admitted, _action(p), p.ref.capture_ns))
            elif must_fire and now > p.timing.window_end_ns:
                # Firing now would hit the next unit; the caller must alarm (unit left unrejected).
                late_ms = (now - p.timing.window_end_ns) / NS_PER_MS
                reason = f"gate window closed {late_ms:.1f} ms before the reject could fire"
                log.error("missed reject of %s/%s: %s", p.ref.line, p.ref.unit_id, reason)
                cause = self._fire_cause(p)
                self._emit(GateEvent(p.ref.line, p.ref.unit_id, p.ref.lot, Outcome.MISSED, cause, p.timing, p.verdict_ns, now, None, reason,
                                     p.admitted, _action(p), p.ref.capture_ns))
            elif p.action is None:
                self._start_fire(p, FireCause.LATE, now)
            elif p.action is Action.REJECT:
                self._start_fire(p, p.cause, now, p.reason)
            elif self.fail_safe:
                self._start_fire(p, FireCause.FAILSAFE, now, self.fail_safe_reason)
            elif self._gate.positive_release:
                self._start_task(self._do_release(p, now))
            else:
                self._emit(GateEvent(p.ref.line, p.ref.unit_id, p.ref.lot, Outcome.PASSED, p.cause, p.timing, p.verdict_ns, now,
                                     admitted=p.admitted, action=_action(p), capture_ns=p.ref.capture_ns))

    @staticmethod
    def _fire_cause(p: _Pending) -> str:
        """Why a unit that is not passing is removed: its reject's cause, or late / fail-safe."""
        if p.action is Action.REJECT:
            return p.cause
        return FireCause.LATE if p.action is None else FireCause.FAILSAFE

    def _start_fire(self, p: _Pending, cause: str, now: int, reason: str = "") -> None:
        self._start_task(self._do_fire(p, cause, now, reason))

    def _start_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._fire_tasks.add(task)
        task.add_done_callback(self._fire_tasks.discard)

    async def _do_release(self, p: _Pending, acted: int) -> None:
        """Positive release of a unit with a pass verdict; a release that fails leaves the unit on
        the reject path (rejected by default), recorded as a fail-safe reject with the reason."""
        ok, fired_ns, why = await self._gate_report(p, "releasing", self._gate.release_unit(p.ref))
        if ok:
            event = GateEvent(p.ref.line, p.ref.unit_id, p.ref.lot, Outcome.PASSED, p.cause, p.timing, p.verdict_ns, acted,
                              fired_ns, admitted=p.admitted, action=_action(p), capture_ns=p.ref.capture_ns)
        else:
            log.error("release of %s/%s failed: %s", p.ref.line, p.ref.unit_id, why)
            event = GateEvent(p.ref.line, p.ref.unit_id, p.ref.lot, Outcome.FIRED, FireCause.FAILSAFE, p.timing, p.verdict_ns,
                              acted, None, f"release failed ({why}): rejected by default", p.admitted, _action(p),
                              p.ref.capture_ns)
        self._emit(event)

    async def _do_fire(self, p: _Pending, cause: str, acted: int, reason: str) -> None:
        ok, fired_ns, why = await self._gate_report(p, "firing", self._gate.fire_unit(p.ref, cause))
        outcome = Outcome.FIRED if ok else Outcome.FIRE_FAILED
        if not ok:
            log.error("reject of %s/%s (%s) failed: %s", p.ref.line, p.ref.unit_id, cause, why)
        self._emit(
            GateEvent(p.ref.line, p.ref.unit_id, p.ref.lot, outcome, cause, p.timing, p.verdict_ns, acted, fired_ns, why or reason,
                      p.admitted, _action(p), p.ref.capture_ns)
        )

    @staticmethod
    async def _gate_report(p: _Pending, doing: str, call: Awaitable[FireResult]) -> tuple[bool, int | None, str]:
        """(ok, gate time, reason) of one gate command: a gate driver bug is a failed command (the
        unit is rejected, or reported not rejected), not a dead scheduler."""
        try:
            report = await call
            return bool(report.ok), report.fired_ns, report.reason
        except Exception as exc:
            log.exception("gate driver raised %s %s/%s", doing, p.ref.line, p.ref.unit_id)
            return False, None, f"gate driver error: {exc!r}"

    def _remember(self, key: tuple[str, str], had_verdict: bool, capture_ns: int) -> None:
        self._done[key] = (had_verdict, capture_ns)
        if len(self._done) > self._memory:
            self._done.popitem(last=False)

    def _emit(self, event: GateEvent) -> None:
        self.stats.outcomes[f"{event.outcome}:{event.cause}"] += 1
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("gate event callback failed")

    def _decide(self, kind: DecisionKind, unit: UnitRef, reason: str, timing: GateTiming | None = None) -> Decision:
        self.stats.decisions[kind] += 1
        if kind is DecisionKind.LATE:
            log.warning("late verdict for %s/%s: %s", unit.line, unit.unit_id, reason)
        return Decision(kind, unit.line, unit.unit_id, reason, timing)

    def _refuse(self, line: str, unit_id: str, reason: str) -> Decision:
        self.stats.decisions[DecisionKind.REFUSED] += 1
        log.warning("refused gate command for line=%r unit=%r: %s", line, unit_id, reason)
        decision = Decision(DecisionKind.REFUSED, line, unit_id, reason)
        if self._on_refusal is not None:
            try:
                self._on_refusal(decision)
            except Exception:
                log.exception("refusal callback failed")
        return decision


def _action(p: _Pending) -> str | None:
    return None if p.action is None else str(p.action)


def _field(raw: Any, name: str) -> str:
    value = raw.get(name) if isinstance(raw, Mapping) else getattr(raw, name, None)
    return value if isinstance(value, str) else ""
