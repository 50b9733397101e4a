"""`Watchdog` turns pipeline heartbeats (worker, Triton, broker) into a fail-safe state with
raise/clear alarm events, so the caller can make the gate reject everything while blind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from pipeline.actuation.alarms import AlarmCode, AlarmEvent
from pipeline.actuation.clock import Clock, SystemClock
from pipeline.core.times import NS_PER_S

log = logging.getLogger(__name__)


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
        code: str = AlarmCode.PIPELINE_UNHEALTHY,
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
