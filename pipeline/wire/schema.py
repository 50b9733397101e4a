"""JSON Schema of the wire contracts, generated from the message types themselves.

A JSON message's schema comes from its dataclass's type hints (pydantic's `TypeAdapter`), with
the limits `messages.document_problem` enforces added (string lengths, int64 and epoch-ns ranges),
so the published schema and the check both ends run are one contract. Frames, reject images and
dead letters are bytes with their metadata in Kafka headers: their schemas describe the headers.
``linesight schemas export`` writes them all to ``docs/schemas/<name>.v<N>.json``;
tests/unit/test_message_contracts.py fails when a type's fields change without a version change.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from pydantic import TypeAdapter

from pipeline.wire.messages import (
    H_CAMERA,
    H_CAMERA_TS,
    H_CAPTURE_NS,
    H_CONTENT_TYPE,
    H_DEFECT,
    H_DLQ_REASON,
    H_DLQ_SOURCE,
    H_DLQ_STAGE,
    H_ENCODER,
    H_FRAME_ID,
    H_LINE,
    H_LOT,
    H_PRODUCT,
    H_PURPOSE,
    H_STATION,
    H_UNIT,
    H_VERDICT,
    IMAGE_CONTENT_TYPES,
    MAX_EPOCH_NS,
    MAX_HEADER_BYTES,
    MAX_PRODUCT_CHARS,
    MAX_STRING_CHARS,
    MAX_TEXT_CHARS,
    MAX_UNIT_ID_CHARS,
    PURPOSE_CHALLENGE,
    REQUIRED_FRAME_HEADERS,
    SCHEMA_VERSION_FIELD,
    SHORT_TEXT_FIELDS,
    UNVERSIONED_SCHEMA_VERSION,
    JsonMessage,
    schema_name,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
INT64_MIN = -MAX_EPOCH_NS - 1
# Versions of the header-described (binary) records; bump with any change to their headers.
FRAME_SCHEMA_VERSION = 1
CAPTURE_SCHEMA_VERSION = 1
REJECT_IMAGE_SCHEMA_VERSION = 1
DEAD_LETTER_SCHEMA_VERSION = 1


def schema_id(name: str, version: int) -> str:
    return f"urn:linesight:schema:{name}:v{version}"


def schema_file(name: str, version: int) -> str:
    return f"{name}.v{version}.json"


def _doc(obj: object) -> str:
    return " ".join((inspect.getdoc(obj) or "").split())


def _constrain(prop: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A pydantic property schema without titles, with the limits `document_problem` checks."""
    out = {k: v for k, v in prop.items() if k != "title"}
    kind = out.get("type")
    if kind == "string" and "enum" not in out and "const" not in out:
        if name == "unit_id":
            out |= {"minLength": 1, "maxLength": MAX_UNIT_ID_CHARS}
        else:
            out["maxLength"] = MAX_TEXT_CHARS if name in SHORT_TEXT_FIELDS else MAX_STRING_CHARS
    elif kind == "integer":
        epoch = name is not None and name.endswith("_ns")
        out |= {"minimum": 0 if epoch else INT64_MIN, "maximum": MAX_EPOCH_NS}
    for key in ("anyOf", "oneOf"):
        if key in out:
            out[key] = [_constrain(arm, name) for arm in out[key]]
    if isinstance(out.get("items"), dict):
        out["items"] = _constrain(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _constrain(out["additionalProperties"])
    return out


def message_schema(cls: type[JsonMessage], topics: list[str]) -> dict[str, Any]:
    """The versioned JSON Schema of JSON message type `cls`, as published on `topics`."""
    raw = TypeAdapter(cls).json_schema()
    assert "$defs" not in raw, f"{cls.__name__}: nested types need $defs handling"
    version = cls.SCHEMA_VERSION
    name = schema_name(cls)
    properties: dict[str, Any] = {
        SCHEMA_VERSION_FIELD: {
            "const": version,
            "description": f"This schema's version. Messages written before versions existed have no such "
                           f"field: read them as version {UNVERSIONED_SCHEMA_VERSION}.",
        },
    }
    properties |= {n: _constrain(p, n) for n, p in raw["properties"].items()}
    return {
        "$schema": DRAFT,
        "$id": schema_id(name, version),
        "title": f"{cls.__name__} v{version}",
        "description": _doc(cls),
        "x-linesight-message": cls.__name__,
        "x-linesight-version": version,
        "x-linesight-topics": topics,
        "x-linesight-encoding": "UTF-8 JSON object as the Kafka record value; NaN and Infinity are refused",
        "type": "object",
        "properties": properties,
        "required": raw.get("required", []),
        "additionalProperties": True,
    }


def _text(max_len: int, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_len, "description": description} | extra


_DIGITS = r"^-?[0-9]{1,20}$"
_FRAME_HEADERS: dict[str, dict[str, Any]] = {
    H_UNIT: _text(MAX_UNIT_ID_CHARS, "the unit's id (what the reject gate removes); printable, no surrounding "
                  "spaces", minLength=1),
    H_LINE: _text(MAX_TEXT_CHARS, "the line", minLength=1),
    H_CAMERA: _text(MAX_TEXT_CHARS, "the camera (a station camera's serial number)", minLength=1),
    H_PRODUCT: _text(MAX_PRODUCT_CHARS, "the product id", minLength=1),
    H_CAPTURE_NS: _text(20, "capture time, epoch ns, decimal; within 1 h before and 5 s after the broker time",
                        pattern=_DIGITS),
    H_CONTENT_TYPE: {"enum": list(IMAGE_CONTENT_TYPES), "default": "image/png",
                     "description": "the value's image encoding"},
    H_LOT: _text(MAX_TEXT_CHARS, "the lot (absent: none)"),
    H_ENCODER: _text(20, "conveyor encoder count at capture (encoder-timed lines)", pattern=_DIGITS),
    H_STATION: _text(32, "inspection station of a multi-station line", pattern="^[a-z0-9][a-z0-9_-]{0,31}$"),
    H_FRAME_ID: _text(20, "the camera's own frame (block) id", pattern=_DIGITS),
    H_CAMERA_TS: _text(20, "the camera's timestamp, ns of its own clock", pattern=_DIGITS),
    H_PURPOSE: {"enum": ["", PURPOSE_CHALLENGE], "description": "absent or empty: production; "
                "challenge: a challenge unit, never counted as production"},
}


def _header_schema(name: str, version: int, title: str, description: str, topics: list[str],
                   value: str, headers: dict[str, dict[str, Any]], required: list[str],
                   key: str) -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": schema_id(name, version),
        "title": f"{title} v{version}",
        "description": description,
        "x-linesight-version": version,
        "x-linesight-topics": topics,
        "x-linesight-key": key,
        "x-linesight-value": value,
        "x-linesight-encoding": "the JSON object below is the record's Kafka headers (name: UTF-8 value, each at "
                                f"most {MAX_HEADER_BYTES} bytes); a header repeated with different values is refused",
        "type": "object",
        "properties": headers,
        "required": required,
        "additionalProperties": {"type": "string", "maxLength": MAX_HEADER_BYTES},
    }


def frame_schema(topics: list[str]) -> dict[str, Any]:
    return _header_schema(
        "frame", FRAME_SCHEMA_VERSION, "Frame",
        "One camera frame: the encoded image as the record value, its metadata in headers "
        "(pipeline.wire.messages.FrameMeta). A frame whose headers break this schema is not inspected: "
        "it is fail-safe rejected and dead-lettered with the reason.",
        topics, "PNG or JPEG bytes (never base64), at most 20 MiB and 16 Mpx",
        _FRAME_HEADERS, list(REQUIRED_FRAME_HEADERS), "the unit id (UTF-8)")


def capture_schema(topics: list[str]) -> dict[str, Any]:
    return _header_schema(
        "capture", CAPTURE_SCHEMA_VERSION, "Capture",
        "One captured frame without its image: the frame's own headers, published by the camera gateway "
        "with the frame, on the line's partition (pipeline.kafka.partitioning), so the line's reject actuator "
        "admits the unit without fetching image bytes. The image is on the frames topic, keyed by unit id.",
        topics, "empty", _FRAME_HEADERS, list(REQUIRED_FRAME_HEADERS),
        "the line (UTF-8); the partition is the line's, not the key's hash")


def reject_image_schema(topics: list[str]) -> dict[str, Any]:
    headers = {h: _FRAME_HEADERS[h] for h in (H_UNIT, H_LINE, H_LOT, H_CAPTURE_NS, H_STATION)} | {
        H_VERDICT: {"enum": ["reject", "review"], "description": "the verdict the image documents"},
        H_DEFECT: _text(MAX_STRING_CHARS, "the defect class"),
    }
    return _header_schema(
        "reject-image", REJECT_IMAGE_SCHEMA_VERSION, "Reject image",
        "A small JPEG of a unit removed from the line (batch records, dashboards); metadata in headers.",
        topics, "JPEG bytes", headers, [H_UNIT, H_LINE, H_LOT, H_CAPTURE_NS, H_VERDICT, H_DEFECT],
        "the unit id (UTF-8)")


def dead_letter_schema(topics: list[str]) -> dict[str, Any]:
    headers = {
        H_DLQ_REASON: _text(4000, "why the message was refused"),
        H_DLQ_STAGE: _text(MAX_TEXT_CHARS, "where: validate, recipe, inference, judge, gateway, actuator, ..."),
        H_DLQ_SOURCE: _text(MAX_TEXT_CHARS, "the refused record's place, topic:partition:offset"),
    }
    return _header_schema(
        "dead-letter", DEAD_LETTER_SCHEMA_VERSION, "Dead letter",
        "A message a LineSight consumer refused: the original key, value and headers, plus the reason, stage "
        "and source headers (earlier ls-dlq-* headers replaced).",
        topics, "the refused record's value, unchanged (image bytes or JSON)", headers,
        [H_DLQ_REASON, H_DLQ_STAGE, H_DLQ_SOURCE], "the refused record's key")


def schema_text(schema: dict[str, Any]) -> str:
    """The file text of a schema: stable (indented, keys in their order, newline at the end)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


# Keys a schema may change without a version change: prose, and the topic names (deployment
# settings; the exported files name the default topics).
PROSE = frozenset({"description", "title", "x-linesight-topics"})


def schema_shape(schema: dict[str, Any]) -> object:
    """What a schema says about the fields, without its prose: what a version number covers."""
    def strip(node: object) -> object:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in PROSE}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    return strip(schema)
