"""Message contracts (docs/integration.md): every topic's versioned JSON Schema in docs/schemas/
matches the message types, a field change without a version change fails here, and both ends
refuse hostile values with the reason (consumers dead-letter them)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from support import Msg

from pipeline.analytics.sink import ClickHouseSink
from pipeline.cli import contracts
from pipeline.cli.contracts import CONTRACTS, SCHEMA_DIR, Contract, check_schemas, export_schemas, record_line
from pipeline.settings import KafkaSettings, Settings
from pipeline.wire.messages import (
    MAX_STRING_CHARS,
    InspectionResult,
    MessageError,
    RejectCommand,
    UnitVerdict,
)
from pipeline.wire.schema import message_schema

T0 = 1_700_000_000_000_000_000
RESULT = InspectionResult("u-1", "line-1", "cam-1", "tablet-round-white-10mm", "LOT-1", "pass", "model", True,
                          "none", 0.1, 0.5, "tablet_classifier", "3", T0, T0 + 1, T0 + 2, "worker-1",
                          class_scores={"crack": 0.1}, measurements={"fill_mm": 4.2, "gtin": "0123"})


def _doc(**change: object) -> dict[str, Any]:
    return json.loads(RESULT.to_json()) | change


def test_committed_schemas_match_the_message_types() -> None:
    """The contract test: fails, saying what to do, when a type's fields changed without a version change."""
    problems = check_schemas()
    assert not problems, "\n".join(problems)


def test_every_topic_has_one_contract_and_a_schema_file() -> None:
    topics = [f for f in KafkaSettings.model_fields if f.startswith("topic_")]
    assert sorted(c.topic_field for c in CONTRACTS) == sorted(topics)
    index = json.loads((SCHEMA_DIR / "index.json").read_text())
    kafka = KafkaSettings()
    assert set(index["topics"]) == {getattr(kafka, f) for f in topics}
    assert all((SCHEMA_DIR / entry["schema"]).is_file() for entry in index["topics"].values())


@dataclass(frozen=True)
class _ResultWithAField(InspectionResult):
    operator: str = ""


@dataclass(frozen=True)
class _ResultWithAFieldV2(_ResultWithAField):
    SCHEMA_VERSION: ClassVar[int] = 2


def _only(cls: type[InspectionResult]) -> tuple[Contract, ...]:
    """The contracts, with the results topic's message replaced by `cls` (named as the real one)."""
    changed = Contract("topic_results", "inspection-result", cls.SCHEMA_VERSION,
                       lambda topics: message_schema(cls, topics) | {
                           "x-linesight-message": "InspectionResult"}, message=cls)
    return tuple(changed if c.topic_field == "topic_results" else c for c in CONTRACTS)


def test_a_field_change_without_a_version_change_fails_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, folder)
    assert check_schemas(folder) == []
    monkeypatch.setattr(contracts, "CONTRACTS", _only(_ResultWithAField))
    problems = check_schemas(folder)
    assert len(problems) == 1, problems
    assert "InspectionResult: its fields no longer match the committed inspection-result.v1.json" in problems[0]
    assert "bump its version to 2" in problems[0] and "linesight schemas export" in problems[0]
    # Exporting does not paper over it: a published version is never rewritten with other fields.
    written, refused = export_schemas(folder)
    assert refused and "inspection-result.v1.json" in refused[0]
    assert check_schemas(folder) == problems
    # Bumped and exported: the new version is written beside the old one, and the check passes.
    monkeypatch.setattr(contracts, "CONTRACTS", _only(_ResultWithAFieldV2))
    written, refused = export_schemas(folder)
    assert refused == [] and folder / "inspection-result.v2.json" in written
    assert (folder / "inspection-result.v1.json").read_text() == (SCHEMA_DIR / "inspection-result.v1.json").read_text()
    assert check_schemas(folder) == []
    v2 = json.loads((folder / "inspection-result.v2.json").read_text())
    assert v2["properties"]["schema_version"] == {"const": 2, "description": v2["properties"]["schema_version"][
        "description"]} and "operator" in v2["properties"]


def test_prose_changes_need_an_export_not_a_version(tmp_path: Path) -> None:
    folder = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, folder)
    path = folder / "reject-command.v1.json"
    path.write_text(path.read_text().replace("Tells the reject gate", "Asks the reject gate"))
    problems = check_schemas(folder)
    assert len(problems) == 1 and "only its descriptions differ" in problems[0]
    assert export_schemas(folder) == ([path], []) and check_schemas(folder) == []


def test_messages_carry_their_version_and_unversioned_ones_read_as_version_1() -> None:
    doc = json.loads(RESULT.to_json())
    assert doc["schema_version"] == InspectionResult.SCHEMA_VERSION == 1
    del doc["schema_version"]
    assert InspectionResult.from_json(json.dumps(doc)) == RESULT
    for version in (2, 0, "1", True, None):
        with pytest.raises(MessageError, match="schema_version .* is not 1, the only version this reader knows"):
            InspectionResult.from_json(json.dumps(doc | {"schema_version": version}))


def test_a_reader_refuses_other_versions_and_a_newer_one_refuses_unversioned_messages() -> None:
    doc = json.loads(_ResultWithAFieldV2(**vars(RESULT), operator="jd").to_json())
    assert doc["schema_version"] == 2
    assert _ResultWithAFieldV2.from_json(json.dumps(doc)).operator == "jd"
    with pytest.raises(MessageError, match="schema_version 1 is not 2"):
        _ResultWithAFieldV2.from_json(RESULT.to_json())
    unversioned = {k: v for k, v in json.loads(RESULT.to_json()).items() if k != "schema_version"}
    with pytest.raises(MessageError, match="schema_version 1 is not 2"):
        _ResultWithAFieldV2.from_json(json.dumps(unversioned))
    with pytest.raises(MessageError, match="schema_version 2 is not 1"):
        InspectionResult.from_json(json.dumps(doc))


HOSTILE: list[tuple[str, object, str]] = [
    ("verdict", "banana", "verdict: 'banana' is not one of"),
    ("score", "high", "score: str is not a number"),
    ("line", None, "line: NoneType is not a string"),
    ("score", math.nan, "score: nan is not a finite number"),
    ("threshold", math.inf, "threshold: inf is not a finite number"),
    ("unit_id", "", "unit_id: without a unit id"),
    ("unit_id", "u" * 300, "unit_id: unit id has 300 characters"),
    ("line", "l" * 300, "line: 300 characters"),
    ("error", "e" * (MAX_STRING_CHARS + 1), f"error: {MAX_STRING_CHARS + 1} characters"),
    ("reasons", ["r" * (MAX_STRING_CHARS + 1)], "reasons: [0] 65537 characters"),
    ("inspected", 1, "inspected: int is not a boolean"),
    ("capture_ns", -1, "capture_ns: -1 is not an epoch-ns time"),
    ("capture_ns", 2**64, "capture_ns: integer out of int64 range"),
    ("capture_ns", 1.5, "capture_ns: float is not an integer"),
    ("class_scores", {"crack": "0.9"}, "class_scores: ['crack'] str is not a number"),
    ("measurements", {"fill_mm": None}, "measurements: ['fill_mm']"),
    ("parts", [{"index": 0, "score": math.nan}], "parts: [0] ['score'] nan is not a finite number"),
    ("cause", "gremlins", "cause: 'gremlins' is not one of"),
]


@pytest.mark.parametrize("field, value, reason", HOSTILE, ids=[f"{f}-{str(v)[:12]}" for f, v, _ in HOSTILE])
def test_hostile_values_are_refused_on_both_ends(field: str, value: object, reason: str) -> None:
    # Receiving end: JSON as any producer could send it (Python's json writes NaN and Infinity).
    with pytest.raises(MessageError, match=f"bad InspectionResult.{reason}"[:80].replace("[", r"\[").replace(
            "(", r"\(")):
        InspectionResult.from_json(json.dumps(_doc(**{field: value})))
    # Publishing end: the same value never leaves a LineSight producer.
    with pytest.raises(MessageError, match="refusing to publish bad InspectionResult"):
        replace(RESULT, **cast("dict[str, Any]", {field: value})).to_json()


def test_missing_fields_and_non_objects_are_refused() -> None:
    doc = _doc()
    del doc["verdict"]
    with pytest.raises(MessageError, match="InspectionResult misses verdict"):
        InspectionResult.from_json(json.dumps(doc))
    with pytest.raises(MessageError, match="stations: \\[0\\]"):
        UnitVerdict.from_json(json.dumps({"unit_id": "u", "line": "l", "lot": "", "product": "p", "verdict": "pass",
                                          "cause": "model", "decided_ns": T0, "stations": ["not an object"]}))
    with pytest.raises(MessageError, match="refusing to publish bad RejectCommand.verdict"):
        RejectCommand("u", "l", "c", "", "model", "crack", T0, T0, verdict="maybe").to_json()  # type: ignore[arg-type]


def test_the_sink_dead_letters_hostile_results_with_the_reason() -> None:
    """A consumer's end: every refused message becomes a dead letter naming why, none stops the sink."""

    class Rows:
        def __init__(self) -> None:
            self.rows: dict[str, list[dict[str, object]]] = {}

        def insert_json_rows(self, table: str, rows: list[dict[str, object]], settings: object = None) -> None:
            self.rows.setdefault(table.split(".")[-1], []).extend(rows)

    settings = Settings()
    k = settings.kafka
    client = Rows()
    sink = ClickHouseSink(settings, client)  # type: ignore[arg-type]
    bad = [_doc(verdict="banana"), _doc(score="high"), _doc(line=None), _doc(score=math.nan),
           _doc(schema_version=2)]
    sink.write([Msg(k.topic_results, json.dumps(d).encode(), i) for i, d in enumerate(bad)])
    dead = client.rows["dead_letters"]
    assert set(client.rows) == {"dead_letters"} and len(dead) == len(bad)
    reasons = [str(r["reason"]) for r in dead]
    for reason, expected in zip(reasons, ["'banana' is not one of", "str is not a number", "NoneType is not a string",
                                          "nan is not a finite number", "schema_version 2 is not 1"], strict=True):
        assert reason.startswith("sink could not decode: ") and expected in reason, reason


def test_tail_lines_parse_json_messages_and_summarise_binary_ones() -> None:
    kafka = KafkaSettings()
    results = next(c for c in CONTRACTS if c.topic_field == "topic_results")
    frames = next(c for c in CONTRACTS if c.topic_field == "topic_frames")
    ok = record_line(kafka.topic_results, results, 1, 7, 1234, b"u-1", RESULT.to_json(), [])
    assert ok["value"]["unit_id"] == "u-1" and ok["valid"] is True and ok["key"] == "u-1"
    bad = record_line(kafka.topic_results, results, 1, 8, None, None, json.dumps(_doc(verdict="banana")).encode(), [])
    assert bad["valid"] is False and "banana" in bad["error"]
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    frame = record_line(kafka.topic_frames, frames, 0, 0, None, b"u-1", png, [("ls-unit-id", b"u-1")])
    assert frame["size"] == len(png) and len(frame["sha256"]) == 64 and "value" not in frame
    assert frame["headers"] == {"ls-unit-id": "u-1"}
    assert str(png) not in json.dumps(frame)


def _example() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / "subscribe_results.py"
    spec = importlib.util.spec_from_file_location("subscribe_results", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("field, value, reason", [h for h in HOSTILE if not (
    isinstance(h[1], float) and not math.isfinite(h[1])) and h[0] != "parts"])
def test_the_published_schema_refuses_what_the_code_refuses(field: str, value: object, reason: str) -> None:
    """A subscriber checking against docs/schemas/ (the example's checker) agrees with the code."""
    schema = json.loads((SCHEMA_DIR / "inspection-result.v1.json").read_text())
    problems = _example().problems
    assert problems(_doc(), schema) == []
    assert problems(_doc(**{field: value}), schema), f"the schema accepts {field}={str(value)[:40]!r}"


def test_the_example_subscriber_refuses_nan_at_parse_time() -> None:
    with pytest.raises(ValueError, match="NaN is not JSON"):
        json.loads(json.dumps(_doc(score=math.nan)), parse_constant=_example()._no_constant)


class _Recorder:
    """What FramePublisher produces, record by record (no broker)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def list_topics(self, *_: Any, **__: Any) -> None:
        return None

    def produce(self, topic: str, **record: Any) -> None:
        self.records.append({"topic": topic} | record)

    def poll(self, *_: Any) -> None:
        return None


def test_a_capture_is_the_frames_headers_on_its_lines_partition_and_its_schema_holds() -> None:
    """The gateway's capture record (captures topic, capture.v1.json): keyed by line, on the line's
    partition, no image, the frame's headers, which the actuator parses to the frame's metadata."""
    from pipeline.gateway.publisher import FramePublisher
    from pipeline.kafka.partitioning import line_partition
    from pipeline.wire.messages import FrameMeta

    kafka = KafkaSettings(partitions=6, line_partitions={"line-7": 5})
    producer = _Recorder()
    meta = FrameMeta("u-9", "line-7", "cam-1", "tablet-round-white-10mm", T0, "image/png", "LOT-1", station="top")
    FramePublisher(Settings(kafka=kafka), producer).publish(meta, b"\x89PNG")  # type: ignore[arg-type]
    frame, capture = producer.records
    assert (frame["topic"], frame["key"], "partition" in frame) == (kafka.topic_frames, b"u-9", False)
    assert (capture["topic"], capture["key"], capture["value"]) == (kafka.topic_captures, b"line-7", b"")
    assert capture["partition"] == line_partition(kafka, "line-7") == 5
    assert capture["headers"] == frame["headers"]
    assert FrameMeta.from_headers(capture["headers"]) == meta
    schema = json.loads((SCHEMA_DIR / "capture.v1.json").read_text())
    headers = {k: v.decode() for k, v in capture["headers"]}
    problems = _example().problems
    assert problems(headers, schema) == []
    assert problems({k: v for k, v in headers.items() if k != "ls-unit-id"}, schema)  # no unit: refused
