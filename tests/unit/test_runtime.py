"""Small pieces of the service runtime: offsets to commit, settings passed to children."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition
from support import Msg

from pipeline.demo.services import settings_to_env
from pipeline.kafka.commit_loop import next_offsets
from pipeline.settings import Settings


def test_next_offsets_commit_one_past_the_highest_per_partition() -> None:
    msgs = [Msg("a", partition=0, offset=5), Msg("a", partition=1, offset=2), Msg("a", partition=0, offset=6), Msg("b", partition=0, offset=0)]
    got = [(tp.topic, tp.partition, tp.offset) for tp in next_offsets(msgs)]
    assert got == [("a", 0, 7), ("a", 1, 3), ("b", 0, 1)]
    assert isinstance(next_offsets(msgs)[0], TopicPartition)


def test_offsets_going_backwards_stop_the_service() -> None:
    with pytest.raises(RuntimeError, match="backwards"):
        next_offsets([Msg("a", partition=0, offset=5), Msg("a", partition=0, offset=5)])


def test_settings_survive_the_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:9999"}),
            "stream": settings.stream.model_copy(update={"product_models": {"a": "m1", "b": "m2"}, "batch_size": 7}),
        }
    )
    for key, value in settings_to_env(settings).items():
        monkeypatch.setenv(key, value)
    again = Settings()
    assert again.kafka.bootstrap_servers == "127.0.0.1:9999"
    assert again.stream.product_models == {"a": "m1", "b": "m2"}
    assert again.stream.batch_size == 7
    assert again.model_dump() == settings.model_dump()
