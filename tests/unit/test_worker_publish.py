"""The worker's outputs survive a broker restart: a send that fails (the restarted broker's
UnknownError) is sent again until acknowledged, instead of ending the Faust agent for good."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import UnknownError

from streams.app import publish_acknowledged
from streams.processor import Outgoing


class FlakyBroker:
    """Fails the first ``failures`` sends (one refused before queueing), acknowledges the rest."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.acknowledged: list[bytes | None] = []

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                   partition: int | None) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures > 0:
            self.failures -= 1
            if self.failures == 0:
                raise UnknownError()
            future.set_exception(UnknownError())
        else:
            self.acknowledged.append(value)
            future.set_result(None)
        return future


def outputs(n: int) -> list[Outgoing]:
    return [Outgoing("linesight.results", f"u{i}".encode(), f"r{i}".encode()) for i in range(n)]


def test_failed_outputs_are_sent_again_until_acknowledged() -> None:
    broker = FlakyBroker(failures=2)
    asyncio.run(publish_acknowledged(broker.send, outputs(3), retry_s=0.0))
    assert sorted(broker.acknowledged) == [b"r0", b"r1", b"r2"]


def test_a_broker_that_never_acknowledges_ends_the_agent_loudly() -> None:
    broker = FlakyBroker(failures=10**6)
    with pytest.raises(UnknownError):
        asyncio.run(publish_acknowledged(broker.send, outputs(2), retry_s=0.0, give_up_s=0.05))
