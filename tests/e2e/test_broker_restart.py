"""A real Tansu broker killed (SIGKILL) and restarted on its port, memory storage: every topic,
producer id and consumer group is forgotten. The renewing producer delivers again and the
commit-after-write loop goes on, both without a restart of their own. Loopback only; every wait
is a probe with a deadline."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence

import pytest
from confluent_kafka import Message
from support import eventually

from pipeline.core.health import HealthState
from pipeline.embedded.broker import TansuBroker
from pipeline.embedded.process import free_port
from pipeline.kafka.clients import RenewingProducer, make_consumer
from pipeline.kafka.commit_loop import run_batches
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings

DEADLINE_S = 60.0


def wait_for(what: str, done: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    eventually(done, timeout_s, what, poll_s=0.05)


@pytest.fixture
def own_broker(embedded_settings: Settings, tmp_path: object) -> Iterator[tuple[TansuBroker, Settings]]:
    """A broker of this test alone (it gets killed), with the project's topics."""
    tansu = TansuBroker(embedded_settings, port=free_port())
    tansu.start()
    settings = embedded_settings.model_copy(update={"kafka": embedded_settings.kafka.model_copy(
        update={"bootstrap_servers": tansu.bootstrap_servers, "session_timeout_ms": 6000})})
    ensure_topics(settings)
    try:
        yield tansu, settings
    finally:
        tansu.stop()


def kill_and_restart(tansu: TansuBroker, settings: Settings) -> None:
    proc = tansu.process
    assert proc is not None and proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    wait_for("the killed broker exits", lambda: not proc.alive, 10.0)
    tansu.stop()
    tansu.start()
    ensure_topics(settings)


def test_renewing_producer_delivers_after_the_broker_forgot_its_id(own_broker: tuple[TansuBroker, Settings]) -> None:
    tansu, settings = own_broker
    topic = settings.kafka.topic_truth
    producer = RenewingProducer(settings.kafka, "test-restart", stall_s=1.0)
    acked: list[bytes] = []

    def send(n: int, tag: str) -> None:
        for i in range(n):
            value = f"{tag}-{i}".encode()
            producer.produce(topic, key=value, value=value,
                             on_delivery=lambda err, _m, v=value: acked.append(v) if err is None else None)

    try:
        send(20, "before")
        assert producer.flush(10.0) == 0 and producer.renewals == 0
        kill_and_restart(tansu, settings)
        send(20, "after")
        assert producer.flush(DEADLINE_S) == 0, "the producer did not deliver again after the broker restart"
        assert producer.renewals >= 1
    finally:
        producer.close()
    assert sorted(acked) == sorted([f"before-{i}".encode() for i in range(20)] + [f"after-{i}".encode() for i in range(20)])


def test_commit_loop_rides_through_a_broker_restart(own_broker: tuple[TansuBroker, Settings]) -> None:
    """Messages flow through the kill, so batches are committed while the restarted broker no
    longer knows the group (UNKNOWN_MEMBER_ID) and the re-created partitions start at offset 0."""
    tansu, settings = own_broker
    topic = settings.kafka.topic_truth
    seen: set[bytes] = set()
    acked_after: set[bytes] = set()  # acknowledged by the restarted broker: must be consumed
    lock = threading.Lock()
    restarted = threading.Event()

    def handle(messages: Sequence[Message]) -> None:
        with lock:
            seen.update(m.value() or b"" for m in messages)

    stop, stop_source = threading.Event(), threading.Event()
    health = HealthState("restart-test")
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            run_batches(make_consumer(settings.kafka, "restart-test", "restart-test"), [topic], handle, health, stop,
                        max_batch=50, max_wait_s=0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    def acked(err: object, msg: Message) -> None:
        if err is None and restarted.is_set():
            with lock:
                acked_after.add(msg.value() or b"")

    def source() -> None:
        producer = RenewingProducer(settings.kafka, "test-restart-source", stall_s=1.0)
        i = 0
        while not stop_source.wait(0.005):
            producer.produce(topic, value=f"m-{i}".encode(), on_delivery=acked)
            producer.poll(0)
            i += 1
        producer.flush(DEADLINE_S)
        producer.close()

    consumer_thread = threading.Thread(target=loop, name="restart-test-consumer", daemon=True)
    consumer_thread.start()
    source_thread = threading.Thread(target=source, name="restart-test-source", daemon=True)
    try:
        wait_for("the consumer gets partitions", lambda: bool(health.snapshot()["ready"]))
        source_thread.start()
        wait_for("messages flow", lambda: len(seen) >= 100)
        kill_and_restart(tansu, settings)
        restarted.set()
        wait_for("the restarted broker acknowledges messages", lambda: len(acked_after) >= 300)
        stop_source.set()
        source_thread.join(DEADLINE_S)

        def all_consumed() -> bool:
            with lock:
                return acked_after <= seen
        wait_for("every message acknowledged after the restart is consumed", all_consumed)
        assert consumer_thread.is_alive() and not errors
    finally:
        stop_source.set()
        stop.set()
        consumer_thread.join(30.0)
    assert not errors, errors
