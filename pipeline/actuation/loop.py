"""Gate, scheduler and watchdog on their own asyncio loop, callable from plain threads.

The actuator's Kafka consumer loop is synchronous (a thread); OPC UA and the fire timing are
asyncio. `ActuationLoop` runs the asyncio side in one background thread and offers thread-safe
`admit`/`submit`/`beat`. Callbacks (``on_event``, ``on_alarm``, ``on_refusal``) run on that
loop's thread: keep them short and thread-safe (a confluent-kafka ``produce`` is fine).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from pipeline.actuation.alarms import AlarmEvent
from pipeline.actuation.gate import Gate, SimulatedGate
from pipeline.actuation.plc.gate import OpcUaGate
from pipeline.actuation.scheduler import Decision, GateEvent, RejectScheduler
from pipeline.actuation.timing_model import UnitRef
from pipeline.actuation.watchdog import Watchdog
from pipeline.settings.actuation import LineTimingSettings, PlcSettings

T = TypeVar("T")


class ActuationLoop:
    """One line group's actuation on a background event loop. `start` before use; `stop` at exit."""

    def __init__(
        self,
        plc: PlcSettings,
        lines: Mapping[str, LineTimingSettings],
        *,
        watchdog_timeouts_s: Mapping[str, float] | None = None,
        watchdog_clear_after_s: float = 1.0,
        watchdog_interval_s: float = 0.1,
        watchdog_armed: bool = True,
        on_event: Callable[[GateEvent], None] | None = None,
        on_alarm: Callable[[AlarmEvent], None] | None = None,
        on_refusal: Callable[[Decision], None] | None = None,
        gate: Gate | None = None,
    ) -> None:
        self._plc, self._lines = plc, dict(lines)
        self._wd_timeouts = dict(watchdog_timeouts_s or {})
        self._wd_clear, self._wd_interval = watchdog_clear_after_s, watchdog_interval_s
        # False: the watchdog starts at the first `arm()` (when heartbeats can actually arrive).
        self._wd_armed = watchdog_armed
        self._wd_tasks: list[asyncio.Task[None]] = []
        self._on_event, self._on_alarm, self._on_refusal = on_event, on_alarm, on_refusal
        self._given_gate = gate  # None: the PLC when ``plc.enabled``, else the simulated gate
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.gate: Gate | None = None
        self.scheduler: RejectScheduler | None = None
        self.watchdog: Watchdog | None = None
        self._alarms: dict[str, AlarmEvent] = {}
        self._alarms_lock = threading.Lock()

    # ---- lifecycle (any thread)

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="actuation-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("actuation loop did not start")
        if self._error is not None:
            raise RuntimeError(f"actuation loop failed to start: {self._error!r}") from self._error

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and loop.is_running():
            loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ---- commands (any thread; never raise on bad input)

    def admit(self, unit: UnitRef, timeout_s: float = 5.0) -> Decision:
        return self._call(lambda: self._sched().admit(unit), timeout_s)

    def submit(self, raw: Any, timeout_s: float = 5.0) -> Decision:
        return self._call(lambda: self._sched().submit(raw), timeout_s)

    def admit_many(self, units: Sequence[UnitRef], timeout_s: float = 5.0) -> list[Decision]:
        """`admit` for a batch in one hop to the loop thread (per-call hops cost under load)."""
        if not units:
            return []
        return self._call(lambda: [self._sched().admit(u) for u in units], timeout_s)

    def submit_many(self, raws: Sequence[Any], timeout_s: float = 5.0) -> list[Decision]:
        """`submit` for a batch in one hop to the loop thread."""
        if not raws:
            return []
        return self._call(lambda: [self._sched().submit(r) for r in raws], timeout_s)

    def beat(self, component: str, at_ns: int | None = None) -> None:
        """A heartbeat of ``component`` (now, or at ``at_ns`` when it was sent)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._beat_on_loop, component, at_ns)

    def arm(self) -> None:
        """Start the watchdog (or restart every component's grace period) now: call when
        heartbeats can start arriving."""
        if self._loop is not None and self._wd_timeouts:
            self._loop.call_soon_threadsafe(self._arm_on_loop)

    @property
    def fail_safe(self) -> bool:
        return bool(self.scheduler is not None and self.scheduler.fail_safe)

    def observe_encoder(self, line: str, count: int, t_ns: int) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._sched().observe_encoder, line, count, t_ns)

    def active_alarms(self) -> dict[str, AlarmEvent]:
        """Alarms raised and not cleared (gate and watchdog), by code."""
        with self._alarms_lock:
            return dict(self._alarms)

    # ---- internals

    def _beat_on_loop(self, component: str, at_ns: int | None) -> None:
        if self.watchdog is not None:
            self.watchdog.beat(component, at_ns)

    def _arm_on_loop(self) -> None:
        if self.watchdog is None:
            self._start_watchdog()
        else:
            assert self.watchdog is not None
            for component in self._wd_timeouts:
                self.watchdog.beat(component)

    def _start_watchdog(self) -> None:
        handler = fail_safe_handler(self._sched(), self.gate)

        def on_wd(event: AlarmEvent) -> None:
            handler(event)
            self._alarm(event)

        self.watchdog = Watchdog(self._wd_timeouts, clear_after_s=self._wd_clear, on_alarm=on_wd)
        self._wd_tasks.append(asyncio.get_running_loop().create_task(self.watchdog.run(self._wd_interval)))

    def _sched(self) -> RejectScheduler:
        assert self.scheduler is not None, "ActuationLoop.start() first"
        return self.scheduler

    def _call(self, fn: Callable[[], T], timeout_s: float) -> T:
        loop = self._loop
        if loop is None or not loop.is_running():
            raise RuntimeError("actuation loop is not running")
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # scheduler methods do not raise; belt and braces
                fut.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return fut.result(timeout_s)

    def _alarm(self, event: AlarmEvent) -> None:
        with self._alarms_lock:
            if event.active:
                self._alarms[event.code] = event
            else:
                self._alarms.pop(event.code, None)
        if self._on_alarm is not None:
            self._on_alarm(event)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        gate = self._given_gate
        if gate is None:
            gate = (OpcUaGate(self._plc, on_alarm=self._alarm) if self._plc.enabled
                    else SimulatedGate(positive_release=self._plc.positive_release))
        self.gate = gate
        await gate.start()
        self.scheduler = RejectScheduler(self._lines, gate, on_event=self._on_event, on_refusal=self._on_refusal)
        self.scheduler.start()
        tasks = self._wd_tasks
        if self._wd_timeouts and self._wd_armed:
            self._start_watchdog()
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.scheduler.stop()
            if self.gate is not None:
                await self.gate.stop()


def fail_safe_handler(scheduler: RejectScheduler, gate: Gate | None = None) -> Callable[[AlarmEvent], None]:
    """An ``on_alarm`` for `pipeline.actuation.watchdog.Watchdog`: reject-all while the pipeline is blind.

    The scheduler switches at once (units already tracked); the gate is told too, so units the
    pipeline never saw (broker down: no frames reach the actuator) are rejected by the PLC.
    Call from the event loop's thread.
    """
    tasks: set[asyncio.Task[None]] = set()

    def handle(event: AlarmEvent) -> None:
        scheduler.set_fail_safe(event.active, event.reason)
        if gate is not None:
            task = asyncio.get_running_loop().create_task(gate.set_fail_safe(event.active))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return handle
