#!/usr/bin/env python3
"""A plant service subscribing to LineSight's inspection results (docs/integration.md).

Needs only confluent-kafka (``pip install confluent-kafka``) and the published schema file
``docs/schemas/inspection-result.v1.json``; LineSight itself need not be installed. Each result
is checked against the schema before it is used: with the ``jsonschema`` package when installed,
else with the small checker below (the keywords LineSight's schemas use). A message that breaks
the contract is reported with the reason and skipped, never used.

    python examples/subscribe_results.py --bootstrap 127.0.0.1:19092 --group plant-mes

Against the embedded broker of ``linesight up``, keep ``--session-timeout-ms`` short (6000, the
default here): the embedded broker completes a group join in about half the session timeout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError

HERE = Path(__file__).resolve().parent
DEFAULT_SCHEMA = HERE.parent / "docs" / "schemas" / "inspection-result.v1.json"


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # Python's json would read NaN and Infinity


def problems(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Why `value` breaks `schema` (empty: it does not), for the JSON Schema keywords LineSight's
    schemas use: type, const, enum, anyOf, properties, required, additionalProperties, items,
    minLength/maxLength, minimum/maximum."""
    here = where or "message"
    if "anyOf" in schema:
        arms = [problems(value, arm, where) for arm in schema["anyOf"]]
        return [] if any(not a for a in arms) else [f"{here}: " + " or ".join("; ".join(a) for a in arms)]
    out: list[str] = []
    if "const" in schema and value != schema["const"]:
        out.append(f"{here}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{here}: {str(value)[:40]!r} is not one of {schema['enum']}")
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    if kind is not None and not checks[kind](value):
        return out + [f"{here}: {type(value).__name__} is not {kind}"]
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            out.append(f"{here}: length {len(value)} outside {schema.get('minLength', 0)}..{schema.get('maxLength')}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            out.append(f"{here}: {value} outside {schema.get('minimum')}..{schema.get('maximum')}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{here}: misses {name}" for name in schema.get("required", []) if name not in value]
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                out += problems(item, props[name], f"{where}.{name}" if where else name)
            elif extra is False:
                out.append(f"{here}: unknown field {name}")
            elif isinstance(extra, dict):
                out += problems(item, extra, f"{here}[{name!r}]")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += problems(item, schema["items"], f"{here}[{i}]")
    return out


def make_validator(schema: dict[str, Any]):  # noqa: ANN201 - a function of one JSON value
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return lambda doc: problems(doc, schema)
    checker = jsonschema.Draft202012Validator(schema)
    return lambda doc: [f"{'.'.join(map(str, e.path)) or 'message'}: {e.message}" for e in checker.iter_errors(doc)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap servers")
    ap.add_argument("--topic", default="linesight.results")
    ap.add_argument("--group", default="plant-mes", help="this service's consumer group (resumes where it stopped)")
    ap.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA, help="the schema file results are checked against")
    ap.add_argument("--from-beginning", action="store_true", help="a new group starts at the oldest result kept")
    ap.add_argument("--max", type=int, default=None, help="stop after N messages (valid or not)")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    args = ap.parse_args(argv)

    schema = json.loads(args.schema.read_text(encoding="utf-8"))
    version = schema["x-linesight-version"]
    validate = make_validator(schema)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        "enable.auto.commit": False,  # commit after the result was used, not before
        "session.timeout.ms": args.session_timeout_ms,
        # Production brokers need their security settings here too (SASL/TLS: docs/deployment.md).
    })
    consumer.subscribe([args.topic])
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    seen = 0
    try:
        while not stop and (args.max is None or seen < args.max):
            m = consumer.poll(0.5)
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    print(f"kafka: {err.str()}", file=sys.stderr)
                continue
            seen += 1
            where = f"{m.topic()}:{m.partition()}:{m.offset()}"
            try:
                doc = json.loads(m.value() or b"", parse_constant=_no_constant)
            except ValueError as exc:
                print(f"refused {where}: not JSON: {exc}", file=sys.stderr, flush=True)
                doc = None
            if doc is not None:
                if isinstance(doc, dict):
                    doc.setdefault("schema_version", 1)  # written before versions existed: version 1
                found = validate(doc)
                if found:
                    print(f"refused {where}: " + "; ".join(found), file=sys.stderr, flush=True)
                else:
                    # Use the result: here one line per unit; a MES would book it against the lot.
                    print(json.dumps({"unit_id": doc["unit_id"], "line": doc["line"], "lot": doc["lot"],
                                      "verdict": doc["verdict"], "defect": doc["defect"], "score": doc["score"],
                                      "schema": f"v{version}"}), flush=True)
            consumer.commit(message=m, asynchronous=False)
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
