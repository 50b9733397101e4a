"""``linesight tail`` against the embedded broker: JSON lines, contract checked, frames as
headers + size + sha256; with a group it resumes where it stopped (docs/integration.md)."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import replace
from typing import cast

import pytest

from pipeline.cli.contracts import tail
from pipeline.cli.main import main
from pipeline.kafka.clients import flush_or_raise, make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import KafkaSettings, Settings
from pipeline.wire.messages import FrameMeta, InspectionResult

T0 = 1_700_000_000_000_000_000


def test_tail_prints_results_and_frames_as_json_lines(
    broker: str, embedded_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"tail{uuid.uuid4().hex[:8]}"
    k = embedded_settings.kafka
    kafka = k.model_copy(update={"bootstrap_servers": broker} | {
        f: f"{prefix}.{getattr(k, f)}" for f in KafkaSettings.model_fields if f.startswith("topic_")})
    settings = embedded_settings.model_copy(update={"kafka": kafka})
    ensure_topics(settings)
    result = InspectionResult("u-1", "line-1", "cam-1", "tablet-round-white-10mm", "LOT-1", "pass", "model", True,
                              "none", 0.1, 0.5, "tablet_classifier", "3", T0, T0, T0, "worker-1")
    banana = json.loads(result.to_json()) | {"unit_id": "u-3", "verdict": "banana"}
    png = b"\x89PNG\r\n\x1a\n" + bytes(1000)
    producer = make_producer(kafka, "test-tail")
    producer.produce(kafka.topic_results, key=b"u-1", value=result.to_json())
    producer.produce(kafka.topic_results, key=b"u-2", value=replace(result, unit_id="u-2", verdict="reject").to_json())
    producer.produce(kafka.topic_results, key=b"u-3", value=json.dumps(banana).encode())
    producer.produce(kafka.topic_frames, key=b"u-1", value=png,
                     headers=cast("list[tuple[str, str | bytes | None]]",
                                  FrameMeta("u-1", "line-1", "cam-1", "tablet-round-white-10mm", T0).to_headers()))
    flush_or_raise(producer, 10)

    out = io.StringIO()
    assert tail(settings, "results", from_beginning=True, max_messages=3, idle_timeout_s=20, out=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    by_unit = {line["key"]: line for line in lines}
    assert sorted(by_unit) == ["u-1", "u-2", "u-3"]
    assert by_unit["u-2"]["value"]["verdict"] == "reject" and by_unit["u-2"]["valid"] is True
    assert by_unit["u-3"]["valid"] is False and "'banana' is not one of" in by_unit["u-3"]["error"]
    assert all(line["topic"] == kafka.topic_results for line in lines)

    # The command itself, on the frames topic: headers, size and hash, never the image bytes.
    monkeypatch.setenv("LINESIGHT_KAFKA__BOOTSTRAP_SERVERS", broker)
    monkeypatch.setenv("LINESIGHT_KAFKA__TOPIC_FRAMES", kafka.topic_frames)
    capsys.readouterr()
    assert main(["tail", "frames", "--from-beginning", "--max", "1", "--idle-timeout", "20"]) == 0
    (frame,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert frame["headers"]["ls-unit-id"] == "u-1" and frame["size"] == len(png)
    assert frame["sha256"] == hashlib.sha256(png).hexdigest() and "value" not in frame

    # As a consumer group: reads what the group has not consumed, commits, and resumes there.
    group = f"{prefix}-plant-mes"
    out = io.StringIO()
    tail(settings, kafka.topic_results, from_beginning=True, max_messages=3, group=group, idle_timeout_s=30, out=out)
    assert len(out.getvalue().splitlines()) == 3
    producer.produce(kafka.topic_results, key=b"u-4", value=replace(result, unit_id="u-4").to_json())
    flush_or_raise(producer, 10)
    out = io.StringIO()
    tail(settings, kafka.topic_results, max_messages=1, group=group, idle_timeout_s=30, out=out)
    assert [json.loads(line)["key"] for line in out.getvalue().splitlines()] == ["u-4"]


def test_the_example_subscriber_reads_and_checks_results(broker: str, embedded_settings: Settings) -> None:
    """examples/subscribe_results.py (docs/integration.md) against the embedded broker: valid
    results used, a broken one refused with the reason, offsets committed."""
    import subprocess
    import sys
    from pathlib import Path

    topic = f"example{uuid.uuid4().hex[:8]}.linesight.results"
    kafka = embedded_settings.kafka.model_copy(update={"bootstrap_servers": broker, "topic_results": topic})
    ensure_topics(embedded_settings.model_copy(update={"kafka": kafka}))
    result = InspectionResult("u-1", "line-1", "cam-1", "tablet-round-white-10mm", "LOT-1", "reject", "model", True,
                              "crack", 0.9, 0.5, "tablet_classifier", "3", T0, T0, T0, "worker-1")
    producer = make_producer(kafka, "test-example")
    producer.produce(topic, key=b"u-1", value=result.to_json())
    producer.produce(topic, key=b"u-2", value=json.dumps(json.loads(result.to_json()) | {"line": None}).encode())
    flush_or_raise(producer, 10)
    example = Path(__file__).resolve().parents[2] / "examples" / "subscribe_results.py"
    run = subprocess.run([sys.executable, str(example), "--bootstrap", broker, "--topic", topic, "--group", "mes",
                          "--from-beginning", "--max", "2"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    (used,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert used == {"unit_id": "u-1", "line": "line-1", "lot": "LOT-1", "verdict": "reject", "defect": "crack",
                    "score": 0.9, "schema": "v1"}
    # The example checks with jsonschema when installed (the dev extra has it), else its own checker.
    assert f"refused {topic}:" in run.stderr
    assert "line: None is not of type 'string'" in run.stderr or "line: NoneType is not string" in run.stderr
