"""Consumer lag as a Prometheus gauge, from the consumer's own positions.

Why from the consumer and not an exporter: each service knows its group and assignment, and
librdkafka already holds what is needed: the position (next offset to consume) per assigned
partition and the high watermark it caches from every fetch response (``cached=True``: no broker
round trip). It is sampled every few seconds by the consumer loop, never per message.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaException
from prometheus_client import Gauge

log = logging.getLogger(__name__)


class LagGauge:
    """Sets ``linesight_consumer_lag{topic,partition,group}`` for the partitions assigned now and
    removes the series of partitions this member no longer has (after a rebalance)."""

    def __init__(self, gauge: Gauge, group: str) -> None:
        self._gauge, self._group = gauge, group
        self._shown: set[tuple[str, int]] = set()

    def update(self, lags: dict[tuple[str, int], int] | None) -> None:
        """``lags``: None when they could not be read this round; the last values stay."""
        if lags is None:
            return
        for topic, partition in self._shown - set(lags):
            self._gauge.remove(topic, str(partition), self._group)
        for (topic, partition), lag in lags.items():
            self._gauge.labels(topic, str(partition), self._group).set(lag)
        self._shown = set(lags)


def consumer_lag(consumer: Consumer) -> dict[tuple[str, int], int] | None:
    """Messages behind the high watermark per assigned partition; partitions without a position
    yet or without a cached watermark (nothing fetched since the assignment) are left out. A
    metric never stops the consumer: a client error (an assignment changing under it) gives None,
    and the gauge keeps its last values until the next round."""
    lags: dict[tuple[str, int], int] = {}
    try:
        assigned = consumer.assignment()
        for tp in consumer.position(assigned) if assigned else []:
            if tp.offset < 0 or tp.topic is None:
                continue
            marks = consumer.get_watermark_offsets(tp, cached=True)
            if marks is not None and marks[1] >= 0:
                lags[(tp.topic, tp.partition)] = max(0, marks[1] - tp.offset)
    except KafkaException as exc:
        log.debug("consumer lag not read: %s", exc)
        return None
    return lags
