"""Faust's aiokafka transport with a configurable fetch wait.

Faust hard-codes the consumer's `fetch_max_wait_ms` to 1500. Apache Kafka answers a fetch as
soon as one byte is there, but the embedded Tansu broker holds it for a good part of the wait:
measured here, a fetch wait of 500 ms put ~200 ms between produce and consume, 100 ms put ~2 ms
(confluent-kafka); for the worker (aiokafka) at 25 units/s, 100 ms put 34 ms (p50) between the
frame's broker time and its receipt, 20 ms put 8 ms (docs/benchmarks.md).
This transport (registered as the `linesight://` broker scheme in pyproject's
`faust.transports` entry points) sets the wait from `StreamSettings.fetch_max_wait_ms`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from faust.transport.drivers import aiokafka as driver


class ConsumerThread(driver.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 20

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka keeps the constructor argument here and hands it to its fetcher at start().
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer: ClassVar[type[driver.Consumer]] = Consumer


def use_fetch_wait(ms: int) -> None:
    """Set the fetch wait for consumers created after this call (one worker per process)."""
    ConsumerThread.fetch_max_wait_ms = ms
