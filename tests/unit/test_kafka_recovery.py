"""Riding through a broker restart with fakes: the renewing producer and the commit loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from support import Msg as BaseMsg

from pipeline.core.health import HealthState
from pipeline.kafka.clients import RenewingProducer
from pipeline.kafka.commit_loop import run_batches
from pipeline.settings import Settings

Report = Callable[[KafkaError | None, Any], None]


class Msg(BaseMsg):
    def error(self) -> KafkaError | None:
        return None


class ScriptedProducer:
    """Delivery reports are served by flush/poll only when `acks` says so; errors are injected."""

    def __init__(self, error_cb: Callable[[KafkaError], None], **_: Any) -> None:
        self.error_cb = error_cb
        self.sent: list[tuple[bytes | None, Report]] = []
        self.served = 0
        self.acks = True
        self.purged = False
        self.raise_on_produce: KafkaError | None = None

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers: Any = None,
                on_delivery: Report | None = None) -> None:
        if self.raise_on_produce is not None:
            raise KafkaException(self.raise_on_produce)
        assert on_delivery is not None
        self.sent.append((value, on_delivery))

    def poll(self, _timeout: float = 0) -> int:
        if not self.acks:
            return 0
        while self.served < len(self.sent):
            self.served += 1
            self.sent[self.served - 1][1](None, None)
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return len(self.sent) - self.served

    def purge(self, in_queue: bool = True, in_flight: bool = True) -> None:
        self.purged = True


class Factory:
    def __init__(self) -> None:
        self.made: list[ScriptedProducer] = []

    def __call__(self, _kafka: Any, _client_id: str, **conf: Any) -> ScriptedProducer:
        self.made.append(ScriptedProducer(**conf))
        return self.made[-1]


def renewing(stall_s: float = 60.0) -> tuple[RenewingProducer, Factory, list[tuple[bytes, KafkaError | None]]]:
    factory = Factory()
    producer = RenewingProducer(Settings().kafka, "test", stall_s=stall_s, factory=factory)  # type: ignore[arg-type]
    reports: list[tuple[bytes, KafkaError | None]] = []

    def send(value: bytes) -> None:
        producer.produce("t", value=value, on_delivery=lambda err, _m: reports.append((value, err)))

    producer.send = send  # type: ignore[attr-defined]
    return producer, factory, reports


def test_acknowledged_messages_are_reported_once_and_nothing_is_renewed() -> None:
    producer, factory, reports = renewing()
    for v in (b"a", b"b"):
        producer.send(v)  # type: ignore[attr-defined]
    assert producer.flush(1.0) == 0
    assert reports == [(b"a", None), (b"b", None)] and len(factory.made) == 1 and producer.renewals == 0


def test_a_fatal_error_replaces_the_producer_and_resends_what_was_not_acknowledged() -> None:
    producer, factory, reports = renewing()
    producer.send(b"a")  # type: ignore[attr-defined]
    producer.flush(1.0)
    first = factory.made[0]
    first.acks = False
    for v in (b"b", b"c"):
        producer.send(v)  # type: ignore[attr-defined]
    first.error_cb(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "gap", fatal=True))
    assert producer.flush(1.0) == 0
    second = factory.made[1]
    assert first.purged and [v for v, _ in second.sent] == [b"b", b"c"]
    first.acks = True
    first.poll()  # a replaced producer's late reports are ignored
    assert reports == [(b"a", None), (b"b", None), (b"c", None)] and producer.renewals == 1


def test_produce_refused_as_fatal_goes_to_the_new_producer() -> None:
    producer, factory, reports = renewing()
    factory.made[0].raise_on_produce = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    producer.send(b"a")  # type: ignore[attr-defined]
    assert producer.flush(1.0) == 0 and reports == [(b"a", None)] and len(factory.made) == 2


def test_a_lost_connection_without_acknowledgement_renews_after_the_stall() -> None:
    """A restarted memory-only broker answers the old producer id with UNKNOWN_PRODUCER_ID, which
    librdkafka retries silently: only the missing acknowledgements show it."""
    producer, factory, reports = renewing(stall_s=0.0)
    first = factory.made[0]
    first.acks = False
    producer.send(b"a")  # type: ignore[attr-defined]
    first.error_cb(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert producer.flush(1.0) == 0
    assert reports == [(b"a", None)] and [v for v, _ in factory.made[1].sent] == [b"a"]


def test_a_lost_connection_disproved_by_an_acknowledgement_renews_nothing() -> None:
    producer, factory, reports = renewing(stall_s=0.0)
    first = factory.made[0]
    first.acks = False
    producer.send(b"a")  # type: ignore[attr-defined]
    first.error_cb(KafkaError(KafkaError._TRANSPORT, "disconnected"))
    first.acks = True  # reconnected to a broker that knows the producer id: `a` is acknowledged
    assert producer.flush(1.0) == 0 and reports == [(b"a", None)] and len(factory.made) == 1


def test_errors_a_new_producer_cannot_cure_reach_the_caller_once() -> None:
    producer, factory, reports = renewing()
    first = factory.made[0]
    first.acks = False
    producer.send(b"a")  # type: ignore[attr-defined]
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large")
    first.sent[0][1](too_large, None)
    assert producer.flush(0.2) == 0 and reports == [(b"a", too_large)] and len(factory.made) == 1


def test_a_message_without_callback_that_fails_is_reported_by_the_next_flush() -> None:
    """No silent loss: a timed-out message nobody listens for makes `flush` (and so
    `flush_or_raise`, before any commit) say it was not delivered, once."""
    producer, factory, _ = renewing()
    first = factory.made[0]
    first.acks = False
    producer.produce("t", value=b"a")
    first.sent[0][1](KafkaError(KafkaError._MSG_TIMED_OUT, "timed out"), None)
    assert producer.flush(0.2) == 1 and len(producer) == 0
    assert producer.flush(0.2) == 0


class ScriptedConsumer:
    """Hands out scripted batches; commits fail with the scripted errors, in order."""

    def __init__(self, batches: list[list[Msg]], commit_errors: list[KafkaError | None], stop: threading.Event) -> None:
        self.batches, self.commit_errors, self.stop = batches, commit_errors, stop
        self.committed: list[list[tuple[str, int, int]]] = []
        self.closed = False

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None) -> None:
        on_assign(self, [])

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Msg]:
        if not self.batches:
            self.stop.set()
            return []
        return self.batches.pop(0)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        err = self.commit_errors.pop(0) if self.commit_errors else None
        if err is not None:
            raise KafkaException(err)
        self.committed.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def close(self) -> None:
        self.closed = True


def consume(batches: list[list[Msg]], commit_errors: list[KafkaError | None]) -> tuple[list[list[int]], ScriptedConsumer]:
    stop = threading.Event()
    consumer = ScriptedConsumer(batches, commit_errors, stop)
    handled: list[list[int]] = []

    def handle(ms: Any) -> None:
        handled.append([m.offset() for m in ms])

    run_batches(consumer, ["t"], handle, HealthState("test"), stop)  # type: ignore[arg-type]
    return handled, consumer


def test_a_commit_refused_for_a_gone_generation_does_not_stop_the_loop() -> None:
    gone = KafkaError(KafkaError.UNKNOWN_MEMBER_ID, "unknown member")
    handled, consumer = consume([[Msg("t", offset=0), Msg("t", offset=1)], [Msg("t", offset=2)]], [gone, None])
    assert handled == [[0, 1], [2]]  # written before the commit, and the loop went on
    assert consumer.committed == [[("t", 0, 3)]] and consumer.closed


def test_any_other_commit_error_stops_the_loop_loudly() -> None:
    with pytest.raises(KafkaException):
        consume([[Msg("t", offset=0)], [Msg("t", offset=1)]], [KafkaError(KafkaError._MSG_TIMED_OUT, "x")])


def test_a_partition_that_starts_over_ends_the_old_batch_uncommitted() -> None:
    """A memory-only broker restarted: the re-created partition's offsets start again at 0."""
    handled, consumer = consume([[Msg("t", offset=7), Msg("t", offset=8), Msg("t", offset=0), Msg("t", offset=1)]], [])
    assert handled == [[7, 8], [0, 1]]
    assert consumer.committed == [[("t", 0, 2)]]
