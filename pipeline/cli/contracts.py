"""Message contracts of every topic: ``linesight schemas export|check`` and ``linesight tail``.

`CONTRACTS` names, for each topic (a `KafkaSettings.topic_*` field), the message it carries and
its versioned JSON Schema (`pipeline.wire.schema`); ``docs/schemas/`` holds the exported files and
``docs/integration.md`` says how another service subscribes. ``linesight tail TOPIC`` prints
each record of a topic as one JSON line (binary values as their size and sha256, never the bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pipeline.alerts.record import AlertRecord
from pipeline.audit.intake import AuditEventMessage
from pipeline.audit.record import FIELDS as AUDIT_FIELDS
from pipeline.audit.record import TIME_FORMAT
from pipeline.audit.seals import SealStatement
from pipeline.settings import PROJECT_ROOT, KafkaSettings, Settings
from pipeline.wire.messages import (
    MAX_EPOCH_NS,
    Actuation,
    AlarmRecord,
    CameraStatus,
    GateEventRecord,
    GroundTruth,
    Heartbeat,
    InspectionResult,
    JsonMessage,
    MessageError,
    RecipeActivation,
    RejectCommand,
    UnitVerdict,
    schema_name,
)
from pipeline.wire.schema import (
    CAPTURE_SCHEMA_VERSION,
    DEAD_LETTER_SCHEMA_VERSION,
    DRAFT,
    FRAME_SCHEMA_VERSION,
    REJECT_IMAGE_SCHEMA_VERSION,
    capture_schema,
    dead_letter_schema,
    frame_schema,
    message_schema,
    reject_image_schema,
    schema_file,
    schema_id,
    schema_shape,
    schema_text,
)
from pipeline.wire.shadow import ShadowVerdict

SCHEMA_DIR = PROJECT_ROOT / "docs" / "schemas"
AUDIT_RECORD_SCHEMA_VERSION = 1
SEAL_STATEMENT_SCHEMA_VERSION = 1


def audit_record_schema(topics: list[str]) -> dict[str, Any]:
    """The audit topic's records (`pipeline.audit.record.AuditRecord.to_json`): canonical JSON,
    every field text but ``seq``. Their integrity check is the hash chain and its signatures
    (``linesight audit verify``), not a version field: they carry none."""
    props: dict[str, Any] = {f: {"type": "string"} for f in AUDIT_FIELDS}
    props["seq"] = {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH_NS}
    props["time"] = {"type": "string", "description": f"UTC, {TIME_FORMAT} (strftime)"}
    props["detail"] = {"type": "string", "description": "canonical JSON text of the event's detail object"}
    props["record_hash"] = {"type": "string", "description": "sha256 (hex) of the canonical record"}
    props["trail_sig"] = {"type": "string", "description": "Ed25519 signature of record_hash ('' on most records)"}
    return _record_schema("audit-record", AUDIT_RECORD_SCHEMA_VERSION, "AuditRecord", topics, props,
                          list(AUDIT_FIELDS), "GMP audit trail record (docs/audit.md), keyed by chain.")


def seal_statement_schema(topics: list[str]) -> dict[str, Any]:
    from pydantic import TypeAdapter

    raw = TypeAdapter(SealStatement).json_schema()
    props = {n: {k: v for k, v in p.items() if k != "title"} for n, p in raw["properties"].items()}
    return _record_schema("seal-statement", SEAL_STATEMENT_SCHEMA_VERSION, "SealStatement", topics, props,
                          raw.get("required", []), " ".join(SealStatement.__doc__.split()) if SealStatement.__doc__
                          else "")


def _record_schema(name: str, version: int, title: str, topics: list[str], props: dict[str, Any],
                   required: list[str], description: str) -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": schema_id(name, version),
        "title": f"{title} v{version}",
        "description": description,
        "x-linesight-message": title,
        "x-linesight-version": version,
        "x-linesight-topics": topics,
        "x-linesight-encoding": "UTF-8 canonical JSON object (sorted keys) as the Kafka record value; no "
                                "schema_version field (the record hash and signatures are its integrity check)",
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Contract:
    """What one topic carries: a JSON message type (decoded by its `from_json`) or a record
    described by its headers (frames, reject images, dead letters)."""

    topic_field: str  # KafkaSettings field
    name: str  # schema name (file docs/schemas/<name>.v<N>.json)
    version: int
    build: Callable[[list[str]], dict[str, Any]]
    message: type[JsonMessage] | None = None  # JSON messages decoded by the pipeline
    binary: bool = False  # the value is bytes (image, or a refused record): tail prints size + sha256

    def topic(self, kafka: KafkaSettings) -> str:
        return str(getattr(kafka, self.topic_field))

    @property
    def file(self) -> str:
        return schema_file(self.name, self.version)


def _json(topic_field: str, cls: type[JsonMessage]) -> Contract:
    return Contract(topic_field, schema_name(cls), cls.SCHEMA_VERSION,
                    lambda topics: message_schema(cls, topics), message=cls)


CONTRACTS: tuple[Contract, ...] = (
    Contract("topic_frames", "frame", FRAME_SCHEMA_VERSION, frame_schema, binary=True),
    _json("topic_results", InspectionResult),
    _json("topic_rejects", RejectCommand),
    Contract("topic_captures", "capture", CAPTURE_SCHEMA_VERSION, capture_schema, binary=True),
    Contract("topic_deadletter", "dead-letter", DEAD_LETTER_SCHEMA_VERSION, dead_letter_schema, binary=True),
    _json("topic_truth", GroundTruth),
    _json("topic_actuations", Actuation),
    _json("topic_heartbeats", Heartbeat),
    _json("topic_gate_events", GateEventRecord),
    _json("topic_alarms", AlarmRecord),
    Contract("topic_audit", "audit-record", AUDIT_RECORD_SCHEMA_VERSION, audit_record_schema),
    _json("topic_audit_events", AuditEventMessage),
    Contract("topic_audit_seals", "seal-statement", SEAL_STATEMENT_SCHEMA_VERSION, seal_statement_schema),
    _json("topic_alerts", AlertRecord),
    Contract("topic_reject_images", "reject-image", REJECT_IMAGE_SCHEMA_VERSION, reject_image_schema, binary=True),
    _json("topic_recipes", RecipeActivation),
    _json("topic_unit_verdicts", UnitVerdict),
    _json("topic_camera_status", CameraStatus),
    _json("topic_shadow", ShadowVerdict),
)


def generated_schemas(kafka: KafkaSettings | None = None) -> dict[str, dict[str, Any]]:
    """Every contract's schema by file name, naming the topics of `kafka` (default: the default
    topic names, as the committed files do)."""
    kafka = kafka or KafkaSettings()
    out: dict[str, dict[str, Any]] = {}
    for c in CONTRACTS:
        out.setdefault(c.file, c.build([c.topic(kafka)]))
        if c.topic(kafka) not in out[c.file]["x-linesight-topics"]:
            out[c.file]["x-linesight-topics"].append(c.topic(kafka))
    return out


def index_doc() -> dict[str, Any]:
    kafka = KafkaSettings()
    return {
        "description": "Which schema each LineSight topic's records follow (generated by `linesight schemas "
                       "export`; docs/integration.md).",
        "topics": {c.topic(kafka): {"schema": c.file, "id": schema_id(c.name, c.version), "version": c.version}
                   for c in CONTRACTS},
    }


def check_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """What is wrong with the committed schemas in `directory` against the code (empty: nothing).

    A schema whose fields differ from the committed file of the same version is a field change
    without a version change; a file whose prose alone differs only needs exporting again."""
    problems = []
    for file, schema in generated_schemas().items():
        path = directory / file
        name, version = schema["$id"].split(":")[-2:]
        if not path.is_file():
            problems.append(f"{path} is missing: run `linesight schemas export` and commit it")
            continue
        try:
            committed = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            problems.append(f"{path} is not JSON ({exc}): run `linesight schemas export`")
            continue
        if schema_shape(committed) != schema_shape(schema):
            nxt = int(version.removeprefix("v")) + 1
            problems.append(
                f"{schema['x-linesight-message'] if 'x-linesight-message' in schema else name}: its fields no "
                f"longer match the committed {path.name}, and its version is still {version}. A field changed "
                f"without a version change: bump its version to {nxt} (SCHEMA_VERSION of the message type, or "
                f"the schema's version constant), run `linesight schemas export` (it writes "
                f"{schema_file(name, nxt)} and keeps {path.name} for readers of {version}), and say in "
                f"docs/integration.md what readers must do. Undo the change if it was not meant.")
        elif path.read_text(encoding="utf-8") != schema_text(schema):
            problems.append(f"{path}: only its descriptions differ from the code: run `linesight schemas export`")
    index = directory / "index.json"
    if not index.is_file() or index.read_text(encoding="utf-8") != schema_text(index_doc()):
        problems.append(f"{index} is missing or stale: run `linesight schemas export`")
    return problems


def export_schemas(directory: Path = SCHEMA_DIR) -> tuple[list[Path], list[str]]:
    """Write every contract's schema file and the index; returns (written, refused).

    A committed file whose fields differ is never overwritten: that version is published, and its
    readers rely on it. Such a change needs a new version (`check_schemas` says how)."""
    directory.mkdir(parents=True, exist_ok=True)
    written, refused = [], []
    for file, schema in generated_schemas().items():
        path = directory / file
        text = schema_text(schema)
        if path.is_file():
            old = path.read_text(encoding="utf-8")
            if old == text:
                continue
            try:
                same = schema_shape(json.loads(old)) == schema_shape(schema)
            except ValueError:
                same = True  # not even JSON: nothing a reader could rely on
            if not same:
                refused.append(f"{path.name} is published with other fields; a change needs a new version "
                               f"(not overwritten: see `linesight schemas check`)")
                continue
        path.write_text(text, encoding="utf-8")
        written.append(path)
    index = directory / "index.json"
    if not index.is_file() or index.read_text(encoding="utf-8") != schema_text(index_doc()):
        index.write_text(schema_text(index_doc()), encoding="utf-8")
        written.append(index)
    return written, refused


def contract_of(kafka: KafkaSettings, topic: str) -> tuple[str, Contract | None]:
    """The topic a command line names (``results``, ``linesight.results``, ``topic_results``) and
    its contract (None for a topic LineSight does not define)."""
    for c in CONTRACTS:
        full = c.topic(kafka)
        if topic in (full, c.topic_field, c.topic_field.removeprefix("topic_"),
                     c.topic_field.removeprefix("topic_").replace("_", "-"), full.removeprefix("linesight.")):
            return full, c
    return topic, None


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def record_line(topic: str, contract: Contract | None, partition: int, offset: int, timestamp_ms: int | None,
                key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]) -> dict[str, Any]:
    """One consumed record as a JSON-able object: where it is, key, headers, and its value
    (a JSON message parsed and checked against its contract: ``valid``, else ``error``; a binary
    value as ``size`` and ``sha256``)."""
    out: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset,
                           "timestamp_ms": timestamp_ms, "key": _text(key)}
    if headers:
        out["headers"] = {k: _text(v) for k, v in headers}
    data = value or b""
    if contract is not None and contract.binary:
        out |= {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return out
    try:
        out["value"] = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return out | {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "valid": False, "error": f"not JSON: {exc}"}
    if contract is not None and contract.message is not None:
        try:
            contract.message.from_json(data)
            out["valid"] = True
        except MessageError as exc:
            out |= {"valid": False, "error": str(exc)}
    return out


def tail(settings: Settings, topic: str, *, from_beginning: bool = False, max_messages: int | None = None,
         group: str | None = None, idle_timeout_s: float | None = None, out: TextIO | None = None) -> int:
    """Print each record of `topic` as one JSON line until `max_messages` were printed, nothing came for
    `idle_timeout_s`, or Ctrl-C. Without `group` the partitions are assigned (no consumer group,
    nothing committed); with it, the group's committed offsets are resumed and advanced."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, TopicPartition

    from pipeline.kafka.clients import make_consumer

    out = out or sys.stdout
    name, contract = contract_of(settings.kafka, topic)
    start = "earliest" if from_beginning else "latest"
    consumer = make_consumer(settings.kafka, group or f"linesight-tail-{uuid.uuid4().hex[:12]}", "linesight-tail",
                             **{"auto.offset.reset": start, "enable.auto.commit": bool(group),
                                "enable.auto.offset.store": bool(group), "fetch.max.bytes": 64 * 1024 * 1024})
    printed = 0
    try:
        if group:
            consumer.subscribe([name])
        else:
            meta = consumer.list_topics(name, timeout=10.0).topics.get(name)
            if meta is None or meta.error is not None or not meta.partitions:
                raise RuntimeError(f"no topic {name!r} on the broker"
                                   + (f" ({meta.error})" if meta is not None and meta.error else ""))
            where = OFFSET_BEGINNING if from_beginning else OFFSET_END
            consumer.assign([TopicPartition(name, p, where) for p in sorted(meta.partitions)])
        last = time.monotonic()
        while max_messages is None or printed < max_messages:
            m = consumer.poll(0.5)
            if m is None:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    break
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise RuntimeError(f"{name}: {err.str()}")
                print(f"linesight tail: {err.str()}", file=sys.stderr)
                continue
            last = time.monotonic()
            ts = m.timestamp()[1]
            line = record_line(name, contract, m.partition() or 0, m.offset() or 0, ts if ts > 0 else None,
                               m.key(), m.value(), list(m.headers() or []))  # type: ignore[arg-type]
            out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
            out.flush()
            printed += 1
    except BrokenPipeError:  # `linesight tail ... | head`
        pass
    finally:
        consumer.close()
    return 0


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    if args.max is not None and args.max < 1:
        raise ValueError("--max must be at least 1")
    return tail(settings, args.topic, from_beginning=args.from_beginning, max_messages=args.max,
                group=args.group, idle_timeout_s=args.idle_timeout)


def cmd_schemas(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.schemas_command == "check":
        problems = check_schemas(directory)
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{len(generated_schemas())} schemas in {directory}: " + ("ok" if not problems else "out of date"))
        return 1 if problems else 0
    if args.schemas_command == "list":
        kafka = KafkaSettings()
        for c in CONTRACTS:
            print(f"{c.topic(kafka):28} {c.file}")
        return 0
    written, refused = export_schemas(directory)
    for path in written:
        print(f"wrote {path}")
    for line in refused:
        print(f"refused: {line}", file=sys.stderr)
    if not written and not refused:
        print(f"{directory}: every schema is current")
    return 1 if refused else 0


def register(sub: argparse._SubParsersAction, settings_of) -> None:  # noqa: ANN001 - argparse internals
    from pipeline.cli.handlers import with_settings

    p = sub.add_parser("schemas", help="the versioned JSON Schemas of every topic's messages (docs/schemas/, "
                                       "docs/integration.md)")
    s = p.add_subparsers(dest="schemas_command", required=True, metavar="ACTION")
    for action, text in (("export", "write docs/schemas/ from the message types (never rewrites a published "
                                    "version's fields)"),
                         ("check", "exit 1 when docs/schemas/ differs from the message types, saying what to do"),
                         ("list", "each topic and its schema file")):
        c = s.add_parser(action, help=text)
        c.add_argument("--dir", default=str(SCHEMA_DIR), help="schema folder (default: docs/schemas)")
        c.set_defaults(func=cmd_schemas)

    p = sub.add_parser("tail", help="print a topic's records as JSON lines (frames and images: headers, size "
                                    "and sha256, never the bytes)")
    p.add_argument("topic", metavar="TOPIC", help="a topic name, or its short name (results, rejects, frames, ...)")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest record kept (default: new ones)")
    p.add_argument("--max", type=int, default=None, metavar="N", help="stop after N records")
    p.add_argument("--group", default=None, metavar="G",
                   help="consume as group G (resume and commit its offsets); default: no group, nothing committed")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                   help="stop when no record came for S seconds")
    p.set_defaults(func=with_settings(settings_of)(cmd_tail))
