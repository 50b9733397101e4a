"""streams.inflight: several batches in flight, acked strictly in the order taken, adaptive batching."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from streams.inflight import InFlight


class Recorder:
    """Work whose batches finish when the test says so; acks recorded in order."""

    def __init__(self) -> None:
        self.started: list[list[int]] = []
        self.release: dict[int, asyncio.Future[None]] = {}
        self.acked: list[list[int]] = []

    async def work(self, batch: Sequence[int]) -> None:
        self.started.append(list(batch))
        fut = self.release.setdefault(batch[0], asyncio.get_running_loop().create_future())
        await fut

    async def ack(self, batch: Sequence[int]) -> None:
        self.acked.append(list(batch))

    def finish(self, first: int, error: BaseException | None = None) -> None:
        fut = self.release.setdefault(first, asyncio.get_running_loop().create_future())
        fut.set_exception(error) if error else fut.set_result(None)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_idle_worker_sends_a_frame_at_once_and_a_busy_one_gathers_a_batch() -> None:
    async def run() -> None:
        r = Recorder()
        flight = InFlight(r.work, r.ack, batch_size=4, slots=1)
        await flight.add(1)
        await settle()
        assert r.started == [[1]]  # no window: dispatched on the next loop turn
        for e in (2, 3, 4):
            await flight.add(e)
        await settle()
        assert r.started == [[1]] and flight.buffered == 3  # the only slot is busy: they wait together
        r.finish(1)
        await settle()
        assert r.started == [[1], [2, 3, 4]] and r.acked == [[1]]
        r.finish(2)
        await flight.drain(1.0)
        assert r.acked == [[1], [2, 3, 4]]

    asyncio.run(run())


def test_a_later_batch_finishing_first_is_acked_only_after_the_earlier_one() -> None:
    async def run() -> None:
        r = Recorder()
        flight = InFlight(r.work, r.ack, batch_size=2, slots=3)
        for e in range(6):
            await flight.add(e)
        await settle()
        assert r.started == [[0, 1], [2, 3], [4, 5]] and flight.in_flight == 3
        r.finish(4)
        r.finish(2)
        await settle()
        assert r.acked == []  # outputs of 2.. and 4.. confirmed, but batch 0 is not: no ack passes it
        r.finish(0)
        await flight.drain(1.0)
        assert r.acked == [[0, 1], [2, 3], [4, 5]]
        assert flight.batches == 3 and flight.frames == 6

    asyncio.run(run())


def test_a_failed_batch_stops_every_later_ack_and_ends_the_agent() -> None:
    async def run() -> None:
        r = Recorder()
        flight = InFlight(r.work, r.ack, batch_size=1, slots=3)
        for e in range(3):
            await flight.add(e)
        await settle()
        r.finish(2)
        r.finish(1)
        r.finish(0, RuntimeError("broker gave up"))
        await settle()
        assert r.acked == []
        with pytest.raises(RuntimeError, match="broker gave up"):
            await flight.add(3)
        with pytest.raises(RuntimeError, match="broker gave up"):
            await flight.drain(1.0)
        assert r.started == [[0], [1], [2]]  # nothing dispatched after the failure

    asyncio.run(run())


def test_a_full_buffer_with_every_slot_busy_holds_the_consumer_back() -> None:
    async def run() -> None:
        r = Recorder()
        flight = InFlight(r.work, r.ack, batch_size=2, slots=1)
        await flight.add(0)
        await settle()
        await flight.add(1)
        adding = asyncio.create_task(flight.add(2))  # buffer [1, 2] is a full batch, the slot busy
        await settle()
        assert not adding.done()
        r.finish(0)
        await settle()
        assert adding.done() and r.started == [[0], [1, 2]]
        r.finish(1)
        await flight.drain(1.0)
        assert r.acked == [[0], [1, 2]]

    asyncio.run(run())
