"""confluent-kafka clients configured from settings, with safe defaults.

Producers are idempotent with acks=all; a service that keeps one running uses `RenewingProducer`,
which outlives a broker that forgot its producer id. Consumers never auto-commit (offsets are
committed by the caller only after its outputs are acknowledged).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from pipeline.kafka.security import librdkafka_config
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)


def bootstrap(kafka: KafkaSettings) -> str:
    if not kafka.bootstrap_servers:
        raise RuntimeError(
            "no Kafka broker configured: set LINESIGHT_KAFKA__BOOTSTRAP_SERVERS "
            "(127.0.0.1:19092 while `linesight up` runs the embedded broker)"
        )
    return kafka.bootstrap_servers


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security settings shared by every client."""
    # The same security settings the Faust worker gets (pipeline.kafka.security.faust_credentials).
    return {"bootstrap.servers": bootstrap(kafka)} | librdkafka_config(kafka)


def make_producer(kafka: KafkaSettings, client_id: str, **overrides: Any) -> Producer:
    conf = client_config(kafka) | {
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.max.bytes": max(kafka.max_message_bytes + 64 * 1024, 1_000_000),
        "compression.type": "none",  # frames are already compressed images
    }
    return Producer(conf | overrides)


def make_consumer(kafka: KafkaSettings, group_id: str, client_id: str, **overrides: Any) -> Consumer:
    conf = client_config(kafka) | {
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": max(500, kafka.session_timeout_ms // 6),
        "fetch.max.bytes": 64 * 1024 * 1024,
    }
    return Consumer(conf | overrides)


def flush_or_raise(producer: Producer | RenewingProducer, timeout_s: float) -> None:
    """Flush and fail loudly when anything is left unsent: never commit past lost output."""
    left = producer.flush(timeout_s)
    if left:
        raise KafkaException(f"{left} messages still unsent after {timeout_s:.0f} s")


# Errors after which the broker may have come back without this producer's id: a memory-only
# broker (the embedded Tansu) answers the old id with UNKNOWN_PRODUCER_ID forever, and librdkafka
# retries it until `message.timeout.ms` rather than reporting anything.
_CONNECTION_LOST = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})

DeliveryCallback = Callable[[KafkaError | None, Message], None]


def _is_fatal(err: KafkaError) -> bool:
    # `produce` on a producer in its fatal state raises _FATAL without the fatal flag set.
    return err.fatal() or err.code() == KafkaError._FATAL


@dataclass
class _Unacked:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Any
    on_delivery: DeliveryCallback | None
    partition: int | None = None  # None: librdkafka's partitioner (by key)


class RenewingProducer:
    """An idempotent producer that replaces itself when its producer id may be gone.

    Why: a fatal error (librdkafka's idempotence errors) ends a confluent-kafka producer for good,
    and a broker that restarted without its state (Tansu keeps none) leaves it retrying an unknown
    producer id until every message times out. So the producer is replaced by a new one (a new id)
    on a fatal error at once, and after a lost connection once ``stall_s`` passed without any
    acknowledgement. Every message not yet acknowledged is kept and re-sent, in order, by the new
    producer: delivery is at least once (a message whose acknowledgement was lost may be stored
    twice; every consumer here is idempotent under redelivery). ``on_delivery`` is called once per
    message: on its acknowledgement, or on an error a new producer would not cure (too large,
    timed out), outside the producer's lock. A message that fails so without an ``on_delivery`` is
    counted by the next `flush` as not delivered, so `flush_or_raise` never lets a caller commit
    past it. Thread-safe like the producer it wraps (the actuator
    produces from its gate, ticker and consumer threads): its state is guarded by a lock that is
    never held while waiting on the broker, so a flush on one thread does not stall the others.
    """

    def __init__(self, kafka: KafkaSettings, client_id: str, stall_s: float = 2.0,
                 factory: Callable[..., Producer] | None = None, **overrides: Any) -> None:
        self.client_id = client_id
        self._make = partial(factory or make_producer, kafka, client_id, **overrides)
        self._stall_s = stall_s
        self._unacked: dict[int, _Unacked] = {}
        self._seq = 0
        self._generation = 0
        self._fatal: KafkaError | None = None
        self._lost_at: float | None = None  # monotonic time of a lost connection not yet disproved
        self._failed = 0  # messages without on_delivery that ended in an error, since the last flush
        self.renewals = 0
        self._lock = threading.RLock()
        self._producer = self._new()

    def _new(self) -> Producer:
        return self._make(error_cb=partial(self._on_error, self._generation))

    def _on_error(self, generation: int, err: KafkaError) -> None:
        with self._lock:
            if generation != self._generation:
                return
            if _is_fatal(err):
                self._fatal = err
            elif err.code() in _CONNECTION_LOST and self._lost_at is None:
                self._lost_at = time.monotonic()

    def _on_delivery(self, generation: int, seq: int, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a replaced producer's report: the message was handed to its successor
            if err is None:
                self._lost_at = None  # the broker knows this producer: nothing to renew
            elif _is_fatal(err) or self._fatal is not None:
                self._fatal = self._fatal or err
                return  # kept: re-sent by the next producer
            sent = self._unacked.pop(seq, None)
            if sent is not None and err is not None and sent.on_delivery is None:
                self._failed += 1
                log.error("producer %s: message to %s not delivered: %s", self.client_id, sent.topic, err)
        if sent is not None and sent.on_delivery is not None:
            sent.on_delivery(err, msg)

    def _send(self, seq: int, m: _Unacked) -> None:
        report = partial(self._on_delivery, self._generation, seq)
        if m.partition is None:
            self._producer.produce(m.topic, key=m.key, value=m.value, headers=m.headers, on_delivery=report)
        else:
            self._producer.produce(m.topic, key=m.key, value=m.value, headers=m.headers, on_delivery=report,
                                   partition=m.partition)

    def _renew_if_needed(self) -> None:
        """Call with the lock held."""
        lost = self._lost_at is not None and time.monotonic() - self._lost_at >= self._stall_s
        if self._fatal is None and not lost:
            return
        reason = f"fatal error {self._fatal}" if self._fatal is not None else (
            f"no acknowledgement {self._stall_s:.1f} s after the broker connection was lost")
        old = self._producer
        self._generation += 1
        self._fatal, self._lost_at = None, None
        old.purge(in_queue=True, in_flight=True)  # its reports, if served, are ignored (old generation)
        self._producer = self._new()
        self.renewals += 1
        log.warning("producer %s replaced (%s): re-sending %d unacknowledged messages",
                    self.client_id, reason, len(self._unacked))
        for seq, m in sorted(self._unacked.items()):
            self._send(seq, m)

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                headers: Any = None, on_delivery: DeliveryCallback | None = None,
                partition: int | None = None) -> None:
        """Queue one message (BufferError when the local queue is full, as `Producer.produce`);
        ``partition`` overrides the key's (line-keyed topics: pipeline.kafka.partitioning)."""
        with self._lock:
            self._renew_if_needed()
            self._seq += 1
            m = _Unacked(topic, key, value, headers, on_delivery, partition)
            try:
                self._send(self._seq, m)
            except KafkaException as exc:
                if not exc.args or not isinstance(exc.args[0], KafkaError) or not _is_fatal(exc.args[0]):
                    raise
                self._fatal = exc.args[0]
                self._unacked[self._seq] = m
                self._renew_if_needed()
                return
            self._unacked[self._seq] = m

    def poll(self, timeout_s: float = 0.0) -> None:
        with self._lock:
            producer = self._producer
        producer.poll(timeout_s)  # serves reports, which take the lock
        with self._lock:
            self._renew_if_needed()

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every message's acknowledgement, renewing the producer when
        needed; return how many are still unacknowledged, plus those (without ``on_delivery``) that
        failed since the last flush."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if not self._unacked:
                    return self._take_failed()
                producer = self._producer
            left = deadline - time.monotonic()
            if left <= 0:
                with self._lock:
                    return len(self._unacked) + self._take_failed()
            producer.flush(min(left, 0.1))
            with self._lock:
                self._renew_if_needed()

    def _take_failed(self) -> int:
        """Call with the lock held: each failure is reported by one flush."""
        failed, self._failed = self._failed, 0
        return failed

    def close(self) -> None:
        """Let go of the producer, so librdkafka closes its connections now: the handle's error
        callback refers back to this object, so dropping this object alone would leave the handle
        (still connecting) to the garbage collector. Flush first; the object is unusable after."""
        with self._lock:
            self._generation += 1  # reports still served by the handle are ignored
            del self._producer

    def __len__(self) -> int:
        with self._lock:
            return len(self._unacked)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return self._producer.list_topics(topic, timeout=timeout)
