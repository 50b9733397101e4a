"""Wire formats: frames carry metadata in headers; JSON messages decode strictly."""

from __future__ import annotations

import json

import pytest

from pipeline.wire.messages import (
    H_CAPTURE_NS,
    H_DLQ_REASON,
    FrameMeta,
    InspectionResult,
    MessageError,
    RejectCommand,
    check_image_bytes,
    dead_letter_headers,
    header_value,
)


def test_frame_meta_round_trips_through_headers() -> None:
    meta = FrameMeta("u-1", "line-1", "cam-1", "tablet-round-white-10mm", 123, "image/png", "LOT-1")
    assert FrameMeta.from_headers(meta.to_headers()) == meta


@pytest.mark.parametrize(
    "drop, reason",
    [("ls-unit-id", "missing metadata: ls-unit-id"), ("ls-product", "missing metadata: ls-product")],
)
def test_missing_metadata_is_named(drop: str, reason: str) -> None:
    headers = [(k, v) for k, v in FrameMeta("u", "l", "c", "p", 1).to_headers() if k != drop]
    with pytest.raises(MessageError, match=reason):
        FrameMeta.from_headers(headers)


def test_bad_capture_time_and_content_type_are_refused() -> None:
    headers = dict(FrameMeta("u", "l", "c", "p", 1).to_headers())
    with pytest.raises(MessageError, match="not an integer"):
        FrameMeta.from_headers(headers | {H_CAPTURE_NS: b"soon"})
    with pytest.raises(MessageError, match="unsupported content-type"):
        FrameMeta.from_headers(headers | {"content-type": b"text/plain"})


def test_image_signature_check() -> None:
    check_image_bytes(b"\x89PNG\r\n\x1a\n....")
    check_image_bytes(b"\xff\xd8\xff\xe0....")
    for bad in (b"", None, b"GIF89a"):
        with pytest.raises(MessageError):
            check_image_bytes(bad)


def test_json_messages_decode_strictly() -> None:
    cmd = RejectCommand("u", "line-1", "cam", "LOT", "model", "crack", 1, 2)
    assert RejectCommand.from_json(cmd.to_json()) == cmd
    with pytest.raises(MessageError, match="misses"):
        RejectCommand.from_json(b'{"unit_id": "u"}')
    with pytest.raises(MessageError, match="not JSON"):
        RejectCommand.from_json(b"\xff\x00")
    with pytest.raises(MessageError, match="JSON object"):
        InspectionResult.from_json(b"[1, 2]")


def test_dead_letter_headers_keep_the_original_and_add_the_reason() -> None:
    original = [("ls-unit-id", b"u-9"), ("ls-dlq-reason", b"old")]
    headers = dead_letter_headers(original, "corrupt image", "inference", "frames:0:7")
    assert header_value(headers, "ls-unit-id") == "u-9"
    assert header_value(headers, H_DLQ_REASON) == "corrupt image"
    assert [k for k, _ in headers].count(H_DLQ_REASON) == 1


@pytest.mark.parametrize("field, value", [
    ("error", "\ud800"),                       # a text field
    ("class_scores", {"\udfff": 0.5}),         # a key of a typed object
    ("measurements", {"text": "ok \ud83d"}),   # a free-form value
])
def test_a_text_no_utf8_holds_is_refused_on_both_ends(field: str, value: object) -> None:
    """A lone surrogate is a valid JSON escape but no UTF-8: ClickHouse's insert and the audit
    record's hash would fail on it downstream (a whole batch, every retry), so the contract refuses it."""
    good = InspectionResult("u-1", "line-1", "cam-1", "tablet", "LOT-1", "pass", "model", True, "none", 0.1, 0.5,
                            "tablet_classifier", "1", 1, 2, 3, "w1")
    doc = json.loads(good.to_json()) | {field: value}
    with pytest.raises(MessageError, match="not UTF-8 text"):
        InspectionResult.from_json(json.dumps(doc))
    with pytest.raises(MessageError, match="not UTF-8 text"):
        InspectionResult(**{k: v for k, v in doc.items() if k != "schema_version"}).to_json()
