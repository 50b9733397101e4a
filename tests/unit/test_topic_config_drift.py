"""An existing topic whose configuration differs from what LineSight needs is reported loudly
(the seal topic with a broker-default retention would expire the audit trail's anchors)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka.admin import ConfigResource

from pipeline.kafka.topics import TopicSpec, _warn_config_drift


class _Entry:
    def __init__(self, value: str) -> None:
        self.value = value


class _Admin:
    def __init__(self, configs: dict[str, dict[str, str]]) -> None:
        self.configs = configs

    def describe_configs(self, resources: list[ConfigResource], request_timeout: float) -> dict[Any, Future[Any]]:
        out: dict[Any, Future[Any]] = {}
        for r in resources:
            f: Future[Any] = Future()
            f.set_result({k: _Entry(v) for k, v in self.configs[r.name].items()})
            out[r] = f
        return out


SEALS = TopicSpec("linesight.audit-seals", 3, 1, {"retention.ms": "-1", "retention.bytes": "-1"})


def test_a_seal_topic_with_expiring_retention_is_reported_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    admin = _Admin({SEALS.name: {"retention.ms": "604800000", "retention.bytes": "-1"}})
    _warn_config_drift(admin, [SEALS], "kafka:9092", 1.0)  # type: ignore[arg-type]
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    text = record.getMessage()
    assert "retention.ms=604800000" in text and "--add-config retention.ms=-1" in text
    assert "retention.bytes" not in text.split("fix:")[0]  # only what differs


def test_matching_or_undescribed_configs_say_nothing(caplog: pytest.LogCaptureFixture) -> None:
    _warn_config_drift(_Admin({SEALS.name: {"retention.ms": "-1"}}), [SEALS], "k", 1.0)  # type: ignore[arg-type]
    _warn_config_drift(_Admin({SEALS.name: {}}), [SEALS], "k", 1.0)  # type: ignore[arg-type]  # Tansu: none
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
