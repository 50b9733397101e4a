"""Where units come from: the line's trigger source and encoder, and the clocks that put a camera
frame at an encoder position.

In production the PLC owns both (`PlcLineSignals`): the infeed photo-eye latches the conveyor
encoder in hardware and the PLC keeps the latches in a ring (see `PlcNodeIds`); the gateway polls
the encoder count and the ring over OPC UA, so each unit's id and position come from the line, not
from a camera. A station's frame is put on the encoder by its camera timestamp: `CameraClock` maps
it to host time, `EncoderClock` the host time to an encoder count, and `UnitTracker`
(`pipeline.gateway.tracking`) the count to the unit. Tests and the demo run the same path against
the simulated PLC (`pipeline.actuation.plc.simulator`, ``run_line``).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from asyncua.client.client import Client
from asyncua.common.node import Node

from pipeline.core.aio import cancel_and_wait, wait_event
from pipeline.core.opcua import LINK_ERRORS, close_session, describe, make_client, open_session
from pipeline.settings.actuation import PlcSettings

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


class EncoderClock:
    """Encoder position at any host time, from timestamped samples (interpolated; extrapolated a
    little past the last sample at the observed rate).

    Extrapolation is bounded (``max_extrapolation_s``): when the samples stop (PLC link lost) the
    positions stop too (None), so frames can no longer be matched and their units are rejected
    rather than guessed. History is bounded in time and count. The belt runs forward: a count
    going back is a reset of the counter (PLC restart), which starts the history afresh (`resets`),
    so no position is ever interpolated across it.
    """

    def __init__(
        self,
        *,
        max_extrapolation_s: float = 0.1,
        rate_window_s: float = 0.2,
        history_s: float = 5.0,
        max_samples: int = 4096,
    ) -> None:
        self._max_extra_ns = int(max_extrapolation_s * NS_PER_S)
        self._rate_window_ns = int(rate_window_s * NS_PER_S)
        self._history_ns = int(history_s * NS_PER_S)
        self._max_samples = max_samples
        self._t: list[int] = []
        self._c: list[int] = []
        self.resets = 0

    def add(self, t_ns: int, count: int) -> None:
        """A sample: the encoder read ``count`` at host time ``t_ns``. Samples not newer than the
        last one are ignored (a late reply must not bend the line backwards)."""
        if self._t and t_ns <= self._t[-1]:
            return
        if self._c and count < self._c[-1]:
            log.warning("encoder count went back (%d -> %d): counter reset, positions start afresh", self._c[-1], count)
            self._t.clear()
            self._c.clear()
            self.resets += 1
        self._t.append(t_ns)
        self._c.append(count)
        cut = bisect.bisect_left(self._t, t_ns - self._history_ns)
        cut = max(cut, len(self._t) - self._max_samples)
        if cut > 0:
            del self._t[:cut], self._c[:cut]

    @property
    def last(self) -> tuple[int, int] | None:
        """The latest sample (host ns, count)."""
        return (self._t[-1], self._c[-1]) if self._t else None

    def rate(self) -> float | None:
        """Counts per second over the last ``rate_window_s`` (None before two samples)."""
        if len(self._t) < 2:
            return None
        t_last = self._t[-1]
        i = min(bisect.bisect_left(self._t, t_last - self._rate_window_ns), len(self._t) - 2)
        return (self._c[-1] - self._c[i]) * NS_PER_S / (t_last - self._t[i])

    def position_at(self, t_ns: int) -> int | None:
        """The encoder count at host time ``t_ns``; None before the history or too far past it."""
        if not self._t or t_ns < self._t[0]:
            return None
        i = bisect.bisect_right(self._t, t_ns)
        if i < len(self._t):  # between samples i-1 and i
            t0, t1, c0, c1 = self._t[i - 1], self._t[i], self._c[i - 1], self._c[i]
            return c0 + round((c1 - c0) * (t_ns - t0) / (t1 - t0))
        ahead = t_ns - self._t[-1]
        if ahead == 0:
            return self._c[-1]
        rate = self.rate()
        if rate is None or ahead > self._max_extra_ns:
            return None
        return self._c[-1] + round(rate * ahead / NS_PER_S)

    def time_at(self, count: int) -> int | None:
        """The host time the encoder reached ``count`` (its first time, the belt running forward);
        None when that is outside the history and the short extrapolation past it."""
        if not self._t or count < self._c[0]:
            return None
        # Counts are non-decreasing on a belt that runs forward: first sample at or past `count`.
        i = bisect.bisect_left(self._c, count)
        if i < len(self._c):
            if i == 0 or self._c[i] == count:
                return self._t[i]
            t0, t1, c0, c1 = self._t[i - 1], self._t[i], self._c[i - 1], self._c[i]
            return t0 + round((t1 - t0) * (count - c0) / (c1 - c0))
        rate = self.rate()
        if not rate or rate <= 0:
            return None
        ahead = round((count - self._c[-1]) * NS_PER_S / rate)
        return self._t[-1] + ahead if ahead <= self._max_extra_ns else None


class CameraClock:
    """Maps a camera's timestamps to host time: offset = min over recent frames of (system_ts -
    camera_ts) (transfer delay is >= 0, so the minimum is the best estimate); drift-tolerant window.

    Only frames of the last ``window_s`` (host time) count, so a camera clock drifting against the
    host moves the estimate with it (error at most drift x window: 0.5 ms at 100 ppm and 5 s). A
    camera timestamp going backwards (camera reset) starts the estimate afresh.
    """

    def __init__(self, *, window_s: float = 5.0) -> None:
        self._window_ns = int(window_s * NS_PER_S)
        # Monotonic queue of (system_ts, offset), offsets increasing: the front is the window's min.
        self._q: deque[tuple[int, int]] = deque()
        self._last_camera_ts: int | None = None
        self.resets = 0

    def observe(self, camera_ts_ns: int, system_ts_ns: int) -> None:
        if self._last_camera_ts is not None and camera_ts_ns < self._last_camera_ts:
            self._q.clear()
            self.resets += 1
            log.warning(
                "camera clock went back (%d -> %d ns): re-estimating its offset", self._last_camera_ts, camera_ts_ns
            )
        self._last_camera_ts = camera_ts_ns
        offset = system_ts_ns - camera_ts_ns
        while self._q and self._q[-1][1] >= offset:
            self._q.pop()
        self._q.append((system_ts_ns, offset))
        while self._q[0][0] < system_ts_ns - self._window_ns:
            self._q.popleft()

    @property
    def ready(self) -> bool:
        return bool(self._q)

    @property
    def offset_ns(self) -> int | None:
        return self._q[0][1] if self._q else None

    def host_ns(self, camera_ts_ns: int) -> int:
        """Host time of a camera timestamp. Raises LookupError before the first `observe`."""
        if not self._q:
            raise LookupError("camera clock: no frame observed yet")
        return camera_ts_ns + self._q[0][1]


@dataclass(frozen=True)
class Trigger:
    """A unit passed the line's trigger point: the encoder count latched then, and the host time."""

    position: int
    trigger_ns: int
    number: int | None = None  # the PLC's trigger number (diagnostics)


class LineSignalsState(StrEnum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"


@dataclass
class LineSignalsStats:
    polls: int = 0
    triggers: int = 0  # delivered
    lost: int = 0  # triggers the ring overwrote before a poll read them (their units get no id)
    torn: int = 0  # polls that saw the counter ahead of its ring slot (read again next poll)
    counter_resets: int = 0  # the PLC's trigger counter went back (PLC restart)
    reconnects: int = 0


class PlcLineSignals:
    """Production trigger source over OPC UA: samples the PLC's encoder count and reads each
    infeed trigger the PLC latched (trigger counter + latched encoder position, a shift-register
    entry), so every unit gets its id and position from the line.

    One Read request per poll (``poll_s``) takes the encoder count and the trigger counter and
    ring together; the host time halfway through the request dates the encoder sample (fed to
    `clock`). Triggers come out in order, through `get`/`drain`, or the ``on_trigger`` callback
    instead (called in the event loop, after the clock has the poll's sample).
    Triggers latched before the first connection belong to units already on their way: they are
    skipped, not given ids. After a reconnect, triggers still in the ring are recovered; those
    overwritten are counted `LineSignalsStats.lost` (their units get no id, so a positive-release
    gate rejects them). Nothing raises to the caller: link failures reconnect with backoff
    (``plc.reconnect_*``), with the reason in `state_reason`; meanwhile `clock` gets no samples,
    so frame positions stop (None) instead of being guessed.
    """

    def __init__(
        self,
        settings: PlcSettings,
        *,
        clock: EncoderClock | None = None,
        poll_s: float = 0.01,
        on_trigger: Callable[[Trigger], None] | None = None,
        max_queued: int = 10_000,
    ) -> None:
        if not settings.endpoint:
            raise ValueError(
                "no PLC endpoint for the line signals: set LINESIGHT_PLC__ENDPOINT=opc.tcp://host:port/path"
            )
        self._settings = settings
        self.clock = clock or EncoderClock()
        self._poll_s = poll_s
        self._on_trigger = on_trigger
        self._queue: asyncio.Queue[Trigger] = asyncio.Queue(max_queued)
        self.state = LineSignalsState.STOPPED
        self.state_reason = ""
        self.stats = LineSignalsStats()
        self.plc_trigger_count: int | None = None  # the last trigger number handled
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="plc-line-signals")

    async def stop(self) -> None:
        self._stop.set()
        await cancel_and_wait(self._task)
        self._task = None
        self._connected.clear()
        self.state = LineSignalsState.STOPPED

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # ---- triggers

    async def get(self) -> Trigger:
        """The next trigger (waits for it)."""
        return await self._queue.get()

    def drain(self) -> list[Trigger]:
        """Every trigger not yet taken, in order (does not wait)."""
        out: list[Trigger] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    # ---- internals

    async def _supervise(self) -> None:
        s = self._settings
        delay = s.reconnect_initial_s
        while not self._stop.is_set():
            self._set_state(LineSignalsState.CONNECTING, f"connecting to {s.endpoint}")
            client: Client | None = None
            try:
                client = make_client(s, "LineSight camera gateway (line signals)")
                nodes = await asyncio.wait_for(self._open(client), s.connect_timeout_s)
            except asyncio.CancelledError:
                if client is not None:
                    await close_session(client, s.request_timeout_s)
                raise
            except Exception as exc:  # anything failing to connect is "unreachable", with its reason
                if client is not None:
                    await close_session(client, s.request_timeout_s)
                self._set_state(
                    LineSignalsState.UNREACHABLE, f"cannot read the line from PLC {s.endpoint}: {describe(exc)}"
                )
                if await wait_event(self._stop, delay):
                    return
                delay = min(delay * 2, s.reconnect_max_s)
                continue
            delay = s.reconnect_initial_s
            self._set_state(LineSignalsState.CONNECTED, "")
            self._connected.set()
            try:
                reason = await self._poll(client, nodes)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"line signals failed: {describe(exc)}"
            finally:
                self._connected.clear()
                await close_session(client, s.request_timeout_s)
            if self._stop.is_set():
                return
            self.stats.reconnects += 1
            self._set_state(LineSignalsState.UNREACHABLE, reason)
            if await wait_event(self._stop, delay):
                return

    async def _open(self, client: Client) -> list[Node]:
        await open_session(client, self._settings)
        ids = self._settings.nodes
        names = ("encoder_count", "trigger_count", "trigger_latches", "trigger_latch_ids")
        nodes = [client.get_node(getattr(ids, name)) for name in names]
        values = await client.read_attributes(nodes)
        missing = [
            f"{name}={getattr(ids, name)}"
            for name, dv in zip(names, values, strict=True)
            if dv.StatusCode is not None and not dv.StatusCode.is_good()
        ]
        if missing:
            raise LookupError("PLC lacks the line's tags: " + ", ".join(missing))
        if self.plc_trigger_count is None:  # first connection: earlier triggers are not ours
            count = values[1].Value.Value if values[1].Value is not None else None
            if not isinstance(count, int):
                raise LookupError(f"PLC trigger_count is not an integer: {count!r}")
            self.plc_trigger_count = count
        return nodes

    async def _poll(self, client: Client, nodes: list[Node]) -> str:
        s = self._settings
        while not self._stop.is_set():
            t0 = time.time_ns()
            try:
                encoder, count, latches, latch_ids = await asyncio.wait_for(
                    client.read_values(nodes), s.request_timeout_s
                )
            except LINK_ERRORS as exc:
                return f"lost the PLC link: {describe(exc)}"
            t1 = time.time_ns()
            self.stats.polls += 1
            self.clock.add((t0 + t1) // 2, int(encoder))
            self._take(int(count), list(latches), list(latch_ids), t1)
            await asyncio.sleep(self._poll_s)
        return "stopped"

    def _take(self, count: int, latches: list[Any], latch_ids: list[Any], now_ns: int) -> None:
        """Hand out triggers ``plc_trigger_count + 1 .. count`` from the ring, in order."""
        last = self.plc_trigger_count
        assert last is not None
        if count < last:
            self.stats.counter_resets += 1
            log.warning("PLC trigger counter went back from %d to %d (PLC restarted?): following it", last, count)
            self.plc_trigger_count = count
            return
        ring = len(latches)
        if ring == 0 or len(latch_ids) != ring:
            log.error("PLC trigger ring malformed (%d latches, %d ids)", ring, len(latch_ids))
            return
        for n in range(last + 1, count + 1):
            slot_id = int(latch_ids[n % ring])
            if slot_id < n:  # the counter is ahead of its slot: read again next poll
                self.stats.torn += 1
                return
            if slot_id > n:  # overwritten before we read it
                self.stats.lost += 1
                log.error(
                    "PLC trigger %d lost: its ring slot already holds trigger %d (poll slower than %d triggers)",
                    n,
                    slot_id,
                    ring,
                )
                self.plc_trigger_count = n
                continue
            position = int(latches[n % ring])
            when = self.clock.time_at(position)
            self._deliver(Trigger(position, when if when is not None else now_ns, n))
            self.plc_trigger_count = n

    def _deliver(self, trigger: Trigger) -> None:
        self.stats.triggers += 1
        if self._on_trigger is not None:
            try:
                self._on_trigger(trigger)
            except Exception:
                log.exception("trigger callback failed")
            return
        try:
            self._queue.put_nowait(trigger)
        except asyncio.QueueFull:  # bounded memory: a consumer that stopped taking loses units
            self.stats.lost += 1
            log.error("trigger %s dropped: %d triggers nobody took", trigger.number, self._queue.maxsize)

    def _set_state(self, state: LineSignalsState, reason: str) -> None:
        if state is not self.state:
            log.info("PLC line signals %s -> %s %s", self.state, state, reason)
        self.state, self.state_reason = state, reason
