"""Clocks of the actuation path.

Times are epoch nanoseconds (the frames' ``capture_ns``, stamped by the camera host's clock);
`ManualClock` lets tests drive the scheduler and watchdog without real waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Protocol

from pipeline.core.times import NS_PER_S


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
