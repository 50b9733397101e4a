"""The line -> partition map of the line-keyed topics (pipeline.kafka.partitioning): a pinned line
stays where it is when lines or partitions are added, and what a per-line actuator assigns is
exactly its line's partition of each topic it reads."""

from __future__ import annotations

import zlib

import pytest
from pydantic import ValidationError

from pipeline.kafka.partitioning import every_partition, line_assignment, line_partition, line_topics
from pipeline.settings import KafkaSettings, Settings


def test_pinned_lines_never_move_when_lines_or_partitions_are_added() -> None:
    before = KafkaSettings(partitions=12, line_partitions={"line-1": 0, "line-2": 1, "packing": 7})
    placed = {line: line_partition(before, line) for line in before.line_partitions}
    after = KafkaSettings(partitions=24, line_partitions=before.line_partitions | {"line-3": 2, "line-4": 12})
    assert {line: line_partition(after, line) for line in placed} == placed == {"line-1": 0, "line-2": 1, "packing": 7}
    assert (line_partition(after, "line-3"), line_partition(after, "line-4")) == (2, 12)


def test_an_unpinned_line_has_a_deterministic_partition_within_the_topic() -> None:
    kafka = KafkaSettings(partitions=12)
    assert line_partition(kafka, "line-9") == zlib.crc32(b"line-9") % 12  # the same in every process
    assert {line_partition(kafka, f"line-{i}") for i in range(100)} <= set(every_partition(kafka))
    assert line_partition(kafka, "") == zlib.crc32(b"") % 12  # a record without a line still has one


def test_a_pinned_partition_outside_the_topic_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="line_partitions"):
        KafkaSettings(partitions=3, line_partitions={"line-1": 3})
    with pytest.raises(ValidationError, match="line_partitions"):
        KafkaSettings(partitions=3, line_partitions={"line-1": -1})


def test_the_map_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINESIGHT_KAFKA__PARTITIONS", "12")
    monkeypatch.setenv("LINESIGHT_KAFKA__LINE_PARTITIONS", '{"line-1": 0, "line-2": 5}')
    assert line_partition(Settings().kafka, "line-2") == 5


def test_a_per_line_actuator_assigns_its_lines_partition_of_each_topic_it_reads() -> None:
    kafka = KafkaSettings(partitions=12, line_partitions={"line-2": 5})
    assigned = line_assignment(kafka, "line-2")
    assert [(tp.topic, tp.partition) for tp in assigned] == [(t, 5) for t in line_topics(kafka)]
    assert line_topics(kafka) == [kafka.topic_captures, kafka.topic_results, kafka.topic_rejects,
                                  kafka.topic_heartbeats]
    assert kafka.topic_frames not in line_topics(kafka)  # frames stay keyed by unit, read by workers
