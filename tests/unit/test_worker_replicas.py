"""streams.replicas: requests spread over Triton replicas, failing over when one is unreachable."""

from __future__ import annotations

import asyncio

import pytest
from tritonclient.utils import InferenceServerException

from pipeline.settings import TritonSettings
from streams.replicas import Replicas, model_missing, unreachable


class FakeClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.down = False
        self.calls = 0

    async def infer(self) -> str:
        self.calls += 1
        if self.down:
            raise InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
        return self.url


def test_urls_setting_a_single_url_keeps_working_and_replicas_follow_it() -> None:
    assert TritonSettings(url="a:1").replica_urls() == ["a:1"]
    assert TritonSettings(url="a:1", urls=["b:2", "a:1"]).replica_urls() == ["a:1", "b:2"]
    assert TritonSettings(urls=["b:2"]).replica_urls() == ["b:2"]
    with pytest.raises(RuntimeError, match="not resolved"):
        Replicas([], FakeClient)


def test_requests_are_spread_and_fail_over_when_a_replica_goes_away() -> None:
    async def run() -> None:
        replicas = Replicas(["a", "b"], FakeClient, down_s=60.0)
        a, b = replicas.clients
        assert [await replicas.call(lambda c: c.infer()) for _ in range(4)] == ["a", "b", "a", "b"]
        a.down = True
        assert [await replicas.call(lambda c: c.infer()) for _ in range(4)] == ["b"] * 4
        assert a.calls == 3  # tried once, then skipped while marked down
        b.down = True
        with pytest.raises(InferenceServerException):
            await replicas.call(lambda c: c.infer())  # every replica failed: the caller fails safe
        a.down = False
        assert await replicas.call(lambda c: c.infer()) == "a"  # a down replica is still tried last

    asyncio.run(run())


def test_a_request_triton_refused_is_not_retried_elsewhere() -> None:
    async def run() -> None:
        calls: list[str] = []

        async def bad(c: FakeClient) -> str:
            calls.append(c.url)
            raise InferenceServerException("corrupt PNG", status="StatusCode.INVALID_ARGUMENT")

        replicas = Replicas(["a", "b"], FakeClient)
        with pytest.raises(InferenceServerException, match="corrupt"):
            await replicas.call(bad)
        assert calls == ["a"]

    asyncio.run(run())
    assert model_missing(InferenceServerException("Request for unknown model: 'm' has no available versions"))
    assert unreachable(InferenceServerException("x", status="StatusCode.DEADLINE_EXCEEDED"))
    assert not unreachable(InferenceServerException("unknown model", status="StatusCode.NOT_FOUND"))


def test_a_replica_that_unloaded_the_model_passes_the_request_on() -> None:
    async def run() -> None:
        async def infer(c: FakeClient) -> str:
            if c.url == "a":  # shutting down: its models are unloaded first
                raise InferenceServerException("Request for unknown model: 'm' has no available versions")
            return c.url

        assert await Replicas(["a", "b"], FakeClient).call(infer) == "b"
        with pytest.raises(InferenceServerException, match="unknown model"):  # alone: as from one Triton
            await Replicas(["a"], FakeClient).call(infer)

    asyncio.run(run())
