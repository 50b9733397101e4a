"""Several batches in flight per worker, their inputs acknowledged strictly in the order taken.

Why: a worker that waits for Triton, publishes, acks and only then takes the next batch leaves
Triton idle while it publishes and the broker idle while Triton computes (issue 18). Here a
batch starts as soon as a slot is free, and frames wait for a batch only while every slot is
busy: an idle worker sends a frame at once, a busy one gathers what came meanwhile (adaptive
batching, no fixed window).

The commit rule is unchanged: a batch's input events are acknowledged only after its outputs
are confirmed by the broker, *and* after every earlier batch's were. A later batch finishing
first waits for the earlier one, so the committed offset never passes a frame whose outputs were
not written; a batch that fails stops every later batch's ack too, and the error ends the agent.
Faust itself also commits only the contiguous acked prefix of a partition; this ordering makes
the guarantee ours rather than an implementation detail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")
# A batch's work: decide it and publish its outputs until the broker acknowledged them.
Work = Callable[[Sequence[E]], Awaitable[None]]
# Acknowledge a batch's input events (called in batch order, after its work succeeded).
Ack = Callable[[Sequence[E]], Awaitable[None]]


class InFlight(Generic[E]):
    """Frames buffered as they arrive; batches of up to `batch_size` dispatched while fewer than
    `slots` are in flight; acks in order."""

    def __init__(self, work: Work[E], ack: Ack[E], batch_size: int, slots: int) -> None:
        if batch_size < 1 or slots < 1:
            raise ValueError("batch_size and slots must be >= 1")
        self._work, self._ack = work, ack
        self._batch_size, self._slots = batch_size, slots
        self._buffer: list[E] = []
        self._running: set[asyncio.Task[None]] = set()
        self._last: asyncio.Task[None] | None = None  # the latest batch: the next one acks after it
        self._room = asyncio.Event()
        self._room.set()
        self._dispatch_scheduled = False
        self.error: BaseException | None = None
        self.batches = 0  # batches acknowledged
        self.frames = 0  # frames acknowledged

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def add(self, event: E) -> None:
        """Buffer one event; it is dispatched on the next loop turn when a slot is free (frames
        arriving together from one fetch then travel together). Waits while the buffer holds a
        full batch and no slot is free (backpressure on the consumer); raises a failed batch's
        error."""
        self._raise_error()
        self._buffer.append(event)
        self._schedule_dispatch()
        while len(self._buffer) >= self._batch_size and len(self._running) >= self._slots:
            self._room.clear()
            await self._room.wait()
            self._raise_error()

    async def drain(self, timeout_s: float | None = None) -> None:
        """Dispatch what is buffered and wait until every batch is acknowledged (or failed)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while (self._buffer or self._running) and self.error is None:
            self._dispatch()
            if self._running:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait(set(self._running), timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    return
        self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _schedule_dispatch(self) -> None:
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        while self._buffer and len(self._running) < self._slots and self.error is None:
            batch, self._buffer = self._buffer[: self._batch_size], self._buffer[self._batch_size :]
            task = asyncio.create_task(self._run(batch, self._last))
            self._last = task
            self._running.add(task)
            task.add_done_callback(self._done)

    async def _run(self, batch: list[E], previous: asyncio.Task[None] | None) -> None:
        await self._work(batch)
        if previous is not None:
            # Raises the earlier batch's error: then this batch is not acknowledged either.
            await asyncio.shield(previous)
        await self._ack(batch)
        self.batches += 1
        self.frames += len(batch)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if task is self._last:
            self._last = None
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()
            log.error("a batch failed; no later batch is acknowledged: %r", self.error)
        self._room.set()
        if self._buffer:
            self._schedule_dispatch()
