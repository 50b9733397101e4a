"""Helpers shared by tests: waiting on a condition with a deadline, and a stand-in for a
consumed Kafka message (the subset of `confluent_kafka.Message` the services read)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(probe: Callable[[], T], timeout_s: float = 60.0, what: str = "", poll_s: float = 0.2) -> T:
    """The probe's first truthy answer, polled until a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(poll_s)
    return value


async def eventually_async(
    pred: Callable[[], object], timeout_s: float = 10.0, what: str = "condition", poll_s: float = 0.01
) -> None:
    """`eventually` inside an event loop: the loop keeps running the code under test meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s:g} s")
        await asyncio.sleep(poll_s)


class Msg:
    """A consumed message: topic, partition, offset, value, key and headers."""

    def __init__(
        self, topic: str, value: bytes = b"", offset: int = 0, headers: list[tuple[str, bytes]] | None = None,
        partition: int = 0, key: bytes = b"",
    ) -> None:
        self._t, self._v, self._o, self._h, self._p, self._k = topic, value, offset, headers, partition, key

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes:
        return self._k

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._h

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)  # TIMESTAMP_NOT_AVAILABLE, like a message the broker stamped no time on
