"""When each unit is at the reject gate, and a scheduler that fires the gate exactly then.

A verdict is only useful if it reaches the gate before the unit does, and the gate must act
when the unit is in front of it, not when the verdict happens to arrive. So:

* `LineTimingModel` turns a unit's capture (time, or conveyor encoder count) into its
  `GateTiming`: the deadline (unit centred on the gate), the fire time (deadline minus the
  gate's mechanical lead), the window in which a push still removes it, and the verdict cutoff.
* `RejectScheduler` (asyncio) keeps every known unit until its fire time and then does exactly
  one thing: fire (verdict reject; no verdict in time = ``late``; fail-safe active) or let it pass.
  Units are reject-by-default once admitted: a unit whose verdict never comes is rejected.
  Duplicate commands are idempotent; unknown lines and malformed commands are refused with a
  reason (`Decision`), never raised.
* `Watchdog` turns pipeline heartbeats (worker, Triton, broker) into a fail-safe state with
  raise/clear alarm events, so the caller can make the gate reject everything while blind.

Times are epoch nanoseconds (the frames' ``capture_ns``) read from an injectable `Clock`, so
tests drive time deterministically with `ManualClock`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pipeline.aio import cancel_and_wait
from pipeline.plc.settings import LineTimingSettings

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


# --------------------------------------------------------------------------------------- clocks


class Clock(Protocol):
    """Wall time in epoch ns and a sleep that ends at an absolute time."""

    def now_ns(self) -> int: ...

    async def sleep_until(self, t_ns: int) -> None: ...


class SystemClock:
    """The real clock; epoch time because capture stamps come from the camera host's clock."""

    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep_until(self, t_ns: int) -> None:
        delay = (t_ns - time.time_ns()) / NS_PER_S
        await asyncio.sleep(max(delay, 0.0))


class ManualClock:
    """A clock that only moves when a test moves it: timing tests without real waiting."""

    def __init__(self, start_ns: int = 1_000 * NS_PER_S) -> None:
        self._now = start_ns
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0

    def now_ns(self) -> int:
        return self._now

    async def sleep_until(self, t_ns: int) -> None:
        if t_ns <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (t_ns, self._seq, fut))
        await fut

    async def advance(self, delta_ns: int) -> None:
        await self.advance_to(self._now + delta_ns)

    async def advance_to(self, t_ns: int) -> None:
        """Move time forward sleeper by sleeper so each wakes at exactly its own time."""
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= t_ns:
            wake, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, wake)
            fut.set_result(None)
            await _settle()
        self._now = max(self._now, t_ns)
        await _settle()


async def _settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------------- timing model


class TimingError(ValueError):
    """A unit whose gate time cannot be computed (e.g. no encoder count on an encoder line)."""


@dataclass(frozen=True)
class UnitRef:
    """A unit as the camera saw it: identity and where/when it was captured."""

    line: str
    unit_id: str
    capture_ns: int
    encoder_count: int | None = None
    lot: str = ""


@dataclass(frozen=True)
class GateTiming:
    """When a unit meets the gate (epoch ns)."""

    deadline_ns: int  # unit centred on the gate
    fire_at_ns: int  # command goes out (deadline minus the gate's mechanical lead)
    window_start_ns: int  # first moment a push still removes the unit
    window_end_ns: int  # last moment a push still removes the unit
    verdict_cutoff_ns: int  # a verdict arriving after this is late


class EncoderTracker:
    """Conveyor position/rate from (count, time) samples; extrapolates when a count is reached."""

    def __init__(self, window_ns: int, fallback_counts_per_s: float) -> None:
        self._window_ns = window_ns
        self._fallback = fallback_counts_per_s
        self._samples: deque[tuple[int, int]] = deque()

    def observe(self, count: int, t_ns: int) -> None:
        if self._samples and t_ns < self._samples[-1][0]:
            return  # out-of-order sample: the newest one already describes the belt better
        self._samples.append((t_ns, count))
        while len(self._samples) > 2 and t_ns - self._samples[0][0] > self._window_ns:
            self._samples.popleft()

    def counts_per_s(self) -> float:
        if len(self._samples) >= 2:
            (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
            if t1 > t0:
                return (c1 - c0) * NS_PER_S / (t1 - t0)
        return self._fallback

    def time_of(self, count: int) -> int:
        """Time the belt reaches ``count``; far future while the belt stands still."""
        if not self._samples:
            raise TimingError("no encoder sample yet")
        t_last, c_last = self._samples[-1]
        rate = max(self.counts_per_s(), 1e-6)
        return t_last + round((count - c_last) * NS_PER_S / rate)


class LineTimingModel:
    """One line's camera-to-gate timing (speed mode or encoder mode, see `LineTimingSettings`)."""

    def __init__(self, line: str, settings: LineTimingSettings) -> None:
        self.line = line
        self.settings = settings
        self._lead_ns = round(settings.actuation_lead_ms * NS_PER_MS)
        self._margin_ns = round(settings.verdict_margin_ms * NS_PER_MS)
        self._encoder: EncoderTracker | None = None
        if settings.encoder_mode:
            assert settings.counts_per_mm is not None
            self._offset_counts = settings.resolved_gate_offset_counts()
            self._encoder = EncoderTracker(
                round(settings.encoder_rate_window_s * NS_PER_S),
                settings.conveyor_speed_mm_s * settings.counts_per_mm,
            )

    @property
    def encoder_mode(self) -> bool:
        return self._encoder is not None

    def observe_encoder(self, count: int, t_ns: int) -> None:
        if self._encoder is not None:
            self._encoder.observe(count, t_ns)

    def timing(self, unit: UnitRef) -> GateTiming:
        s = self.settings
        if self._encoder is None:
            travel_ns = round(s.camera_to_gate_mm / s.conveyor_speed_mm_s * NS_PER_S)
            deadline = unit.capture_ns + travel_ns
            half_window = round(s.gate_window_mm / 2 / s.conveyor_speed_mm_s * NS_PER_S)
        else:
            if unit.encoder_count is None:
                raise TimingError(f"line {self.line} is encoder-timed but unit {unit.unit_id} has no encoder count")
            assert s.counts_per_mm is not None
            deadline = self._encoder.time_of(unit.encoder_count + self._offset_counts)
            rate = max(self._encoder.counts_per_s(), 1e-6)
            half_window = round(s.gate_window_mm / 2 * s.counts_per_mm / rate * NS_PER_S)
        fire_at = deadline - self._lead_ns
        return GateTiming(
            deadline_ns=deadline,
            fire_at_ns=fire_at,
            window_start_ns=deadline - half_window,
            window_end_ns=deadline + half_window,
            verdict_cutoff_ns=fire_at - self._margin_ns,
        )


# ------------------------------------------------------------------------------------ scheduler


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


class FireReport(Protocol):
    """What a gate driver reports for one fire (`pipeline.plc.gate.FireResult` is one)."""

    @property
    def ok(self) -> bool: ...

    @property
    def fired_ns(self) -> int | None: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class FireDone:
    """A plain `FireReport` for gates without confirmation (the simulated gate, tests)."""

    ok: bool = True
    fired_ns: int | None = None
    reason: str = ""


FireFn = Callable[[UnitRef, str], Awaitable[FireReport]]


@dataclass(frozen=True)
class GateCommand:
    """A verdict for one unit, validated. Build with `GateCommand.parse` from anything."""

    unit: UnitRef
    action: Action = Action.REJECT
    cause: str = FireCause.MODEL

    @classmethod
    def parse(cls, raw: Any) -> GateCommand:
        """From a `GateCommand`, a mapping, or an object with the fields (e.g. `RejectCommand`).

        Raises `ValueError` with the reason; the scheduler turns it into a refusal.
        """
        if isinstance(raw, GateCommand):
            return raw

        def get(name: str, default: Any = None) -> Any:
            if isinstance(raw, Mapping):
                return raw.get(name, default)
            return getattr(raw, name, default)

        unit_id, line, capture_ns = get("unit_id"), get("line"), get("capture_ns")
        if not isinstance(unit_id, str) or not unit_id.strip():
            raise ValueError("command without a unit id")
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
        fire: FireFn,
        *,
        clock: Clock | None = None,
        on_event: Callable[[GateEvent], None] | None = None,
        on_refusal: Callable[[Decision], None] | None = None,
        memory: int = 100_000,
        max_future_skew_s: float = 5.0,
    ) -> None:
        self._models = {name: LineTimingModel(name, s) for name, s in lines.items()}
        self._fire = fire
        self._clock: Clock = clock or SystemClock()
        self._on_event = on_event
        self._on_refusal = on_refusal
        self._memory = memory
        self._max_skew_ns = round(max_future_skew_s * NS_PER_S)
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._heap: list[tuple[int, int, tuple[str, str]]] = []
        self._seq = 0
        # finished units -> whether they had a verdict in time (for duplicate vs late answers)
        self._done: OrderedDict[tuple[str, str], bool] = OrderedDict()
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
                return self._decide(DecisionKind.DUPLICATE, unit, "unit already known")
            model = self._model_for(unit)
            if isinstance(model, Decision):
                return model
            tracked = self._track(model, unit)
            tracked.admitted = True
            return self._decide(DecisionKind.ACCEPTED, unit, "admitted", tracked.timing)
        except Exception as exc:  # a bug here must not stop the line's scheduler
            log.exception("admit failed for %r", unit)
            return self._refuse(getattr(unit, "line", ""), getattr(unit, "unit_id", ""), f"internal error: {exc}")

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
            if self._done[key]:
                return self._decide(DecisionKind.DUPLICATE, unit, "unit already acted on")
            return self._decide(DecisionKind.LATE, unit, "verdict after the unit's deadline; it was fail-safe rejected")
        pending = self._pending.get(key)
        if pending is None:
            model = self._model_for(unit)
            if isinstance(model, Decision):
                return model
            pending = self._track(model, unit)
        if pending.action is not None:
            if command.action is Action.REJECT and pending.action is Action.PASS and now <= pending.timing.verdict_cutoff_ns:
                pending.action, pending.cause = Action.REJECT, command.cause  # when in doubt, reject
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
            self._remember(key, p.verdict_ns is not None)
            must_fire = p.action is not Action.PASS or self.fail_safe
            if must_fire and now > p.timing.window_end_ns:
                # Firing now would hit the next unit; the caller must alarm (unit left unrejected).
                late_ms = (now - p.timing.window_end_ns) / NS_PER_MS
                reason = f"gate window closed {late_ms:.1f} ms before the reject could fire"
                log.error("missed reject of %s/%s: %s", p.ref.line, p.ref.unit_id, reason)
                cause = p.cause if p.action is Action.REJECT else (FireCause.LATE if p.action is None else FireCause.FAILSAFE)
                self._emit(GateEvent(p.ref.line, p.ref.unit_id, p.ref.lot, Outcome.MISSED, cause, p.timing, p.verdict_ns, now, None, reason,
                                     p.admitted, _action(p), p.ref.capture_ns))
            elif p.action is None:
                self._start_fire(p, FireCause.LATE, now)
            elif p.action is Action.REJECT:
                self._start_fire(p, p.cause, now)
            elif self.fail_safe:
                self._start_fire(p, FireCause.FAILSAFE, now, self.fail_safe_reason)
            else:
                self._emit(GateEvent(p.ref.line, p.ref.unit_id, p.ref.lot, Outcome.PASSED, p.cause, p.timing, p.verdict_ns, now,
                                     admitted=p.admitted, action=_action(p), capture_ns=p.ref.capture_ns))

    def _start_fire(self, p: _Pending, cause: str, now: int, reason: str = "") -> None:
        task = asyncio.get_running_loop().create_task(self._do_fire(p, cause, now, reason))
        self._fire_tasks.add(task)
        task.add_done_callback(self._fire_tasks.discard)

    async def _do_fire(self, p: _Pending, cause: str, acted: int, reason: str) -> None:
        try:
            report = await self._fire(p.ref, cause)
            ok, fired_ns, why = bool(report.ok), report.fired_ns, report.reason
        except Exception as exc:  # a gate driver bug is a failed fire, not a dead scheduler
            log.exception("gate driver raised firing %s/%s", p.ref.line, p.ref.unit_id)
            ok, fired_ns, why = False, None, f"gate driver error: {exc!r}"
        outcome = Outcome.FIRED if ok else Outcome.FIRE_FAILED
        if not ok:
            log.error("reject of %s/%s (%s) failed: %s", p.ref.line, p.ref.unit_id, cause, why)
        self._emit(
            GateEvent(p.ref.line, p.ref.unit_id, p.ref.lot, outcome, cause, p.timing, p.verdict_ns, acted, fired_ns, why or reason,
                      p.admitted, _action(p), p.ref.capture_ns)
        )

    def _remember(self, key: tuple[str, str], had_verdict: bool) -> None:
        self._done[key] = had_verdict
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


# ------------------------------------------------------------------------------------- watchdog


@dataclass(frozen=True)
class AlarmEvent:
    """An alarm was raised (``active``) or cleared; ``reason`` is for the operator."""

    code: str
    active: bool
    reason: str
    at_ns: int


class Watchdog:
    """Healthy while every component has beaten within its timeout; otherwise fail-safe.

    Components start with a grace of one timeout. The alarm clears only after the pipeline has
    been healthy for ``clear_after_s``, so one stray heartbeat does not reopen the gate.
    """

    def __init__(
        self,
        timeouts_s: Mapping[str, float],
        *,
        clear_after_s: float = 1.0,
        clock: Clock | None = None,
        on_alarm: Callable[[AlarmEvent], None] | None = None,
        code: str = "pipeline_unhealthy",
    ) -> None:
        if not timeouts_s:
            raise ValueError("a watchdog needs at least one component")
        self._clock: Clock = clock or SystemClock()
        now = self._clock.now_ns()
        self._timeouts = {name: round(t * NS_PER_S) for name, t in timeouts_s.items()}
        self._last = dict.fromkeys(self._timeouts, now)
        self._clear_after = round(clear_after_s * NS_PER_S)
        self._healthy_since: int | None = now
        self._on_alarm = on_alarm
        self.code = code
        self.fail_safe = False
        self.reason = ""
        self.events: list[AlarmEvent] = []

    def beat(self, component: str, at_ns: int | None = None) -> None:
        if component not in self._last:
            log.warning("heartbeat from unknown component %r ignored", component)
            return
        t = self._clock.now_ns() if at_ns is None else at_ns
        self._last[component] = max(self._last[component], t)

    def stale(self) -> dict[str, float]:
        """Components past their timeout -> seconds since their last beat."""
        now = self._clock.now_ns()
        return {
            name: (now - last) / NS_PER_S
            for name, last in self._last.items()
            if now - last > self._timeouts[name]
        }

    def check(self) -> bool:
        """Evaluate now; emit raise/clear events on transitions. Returns True when healthy."""
        now = self._clock.now_ns()
        stale = self.stale()
        if stale:
            self._healthy_since = None
            reason = "no heartbeat from " + ", ".join(f"{n} ({age:.1f} s)" for n, age in sorted(stale.items()))
            if not self.fail_safe:
                self.fail_safe, self.reason = True, reason
                self._emit(AlarmEvent(self.code, True, reason, now))
            return False
        if self._healthy_since is None:
            self._healthy_since = now
        if self.fail_safe and now - self._healthy_since >= self._clear_after:
            self.fail_safe, self.reason = False, ""
            self._emit(AlarmEvent(self.code, False, "all components healthy", now))
        return not self.fail_safe

    async def run(self, interval_s: float = 0.1) -> None:
        while True:
            self.check()
            await self._clock.sleep_until(self._clock.now_ns() + round(interval_s * NS_PER_S))

    def _emit(self, event: AlarmEvent) -> None:
        (log.error if event.active else log.warning)("alarm %s %s: %s", event.code, "RAISED" if event.active else "cleared", event.reason)
        self.events.append(event)
        if self._on_alarm is not None:
            try:
                self._on_alarm(event)
            except Exception:
                log.exception("alarm callback failed")
