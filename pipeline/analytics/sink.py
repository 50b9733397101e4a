"""ClickHouse sink: results, unit verdicts, ground truth, actuations, gate events, alarms and dead letters into
analytics tables, and every inspection decision into the GMP audit trail (docs/audit.md).

Inserts are bulk (one insert per table per batch) and idempotent under redelivery: each insert
carries a deduplication token built from its Kafka offsets, and the tables are ReplacingMergeTree
keyed by unit. A message the sink cannot decode is stored as a dead letter with its reason, never
dropped and never allowed to stop the sink.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from confluent_kafka import Message

from pipeline.alerts.record import AlertRecord
from pipeline.audit.decisions import decision_chain, decision_event
from pipeline.audit.publish import AuditPublisher
from pipeline.audit.record import DECISION_ACTION, AuditEvent
from pipeline.audit.trail import AuditTrail
from pipeline.clickhouse import SITE_TABLES, ClickHouseClient
from pipeline.core.health import HealthState
from pipeline.core.times import datetime_from_ns, now_ns
from pipeline.kafka.clients import make_consumer
from pipeline.kafka.commit_loop import run_batches
from pipeline.settings import Settings
from pipeline.wire.messages import (
    H_CAPTURE_NS,
    H_DEFECT,
    H_DLQ_REASON,
    H_DLQ_SOURCE,
    H_DLQ_STAGE,
    H_LINE,
    H_LOT,
    H_STATION,
    H_UNIT,
    H_VERDICT,
    Actuation,
    AlarmRecord,
    GateEventRecord,
    GroundTruth,
    InspectionResult,
    MessageError,
    UnitVerdict,
    header_value,
)
from pipeline.wire.shadow import ShadowVerdict

log = logging.getLogger(__name__)

Row = dict[str, Any]


def _timestamp_ms(m: Message) -> int:
    """The message's broker/create timestamp in ms (0 when the broker gave none)."""
    kind, ms = m.timestamp()
    return int(ms) if ms and ms > 0 else 0


def _source(m: Message) -> str:
    return f"{m.topic()}:{m.partition()}:{m.offset()}"


def inspection_row(m: Message, r: InspectionResult) -> Row:
    """The ``inspections`` row of a result already decoded from `m` (decoded once: the sink's
    audit decision record comes from the same object)."""
    return {
        "unit_id": r.unit_id,
        "line": r.line,
        "camera": r.camera,
        "station": r.station,
        "product": r.product,
        "lot": r.lot,
        "verdict": r.verdict,
        "cause": r.cause,
        "inspected": r.inspected,
        "defect": r.defect,
        "score": r.score,
        "threshold": r.threshold,
        "review_threshold": r.review_threshold,
        "model_name": r.model_name,
        "model_version": r.model_version,
        "capture_time": datetime_from_ns(r.capture_ns),
        "received_time": datetime_from_ns(r.received_ns),
        "inferred_time": datetime_from_ns(r.inferred_ns),
        "worker": r.worker,
        "error": r.error,
        "class_scores": {k: float(v) for k, v in r.class_scores.items()},
        "recipe": r.recipe,
        "measurements": {k: float(v) for k, v in r.measurements.items() if isinstance(v, (int, float))},
        "measured_text": {k: v for k, v in r.measurements.items() if isinstance(v, str)},
        "parts": json.dumps(r.parts, separators=(",", ":")) if r.parts else "",
        "reasons": list(r.reasons),
        "purpose": r.purpose,
        "frame_source": r.frame_source,
        "image_sha256": r.image_sha256,
        "kafka_partition": m.partition(),
        "kafka_offset": m.offset(),
    }


def unit_verdict_row(m: Message) -> Row:
    """One ``unit_verdicts`` row: the stations as the table's Nested columns (parallel arrays)."""
    v = UnitVerdict.from_json(m.value())
    column = lambda name: [s.get(name) for s in v.stations]  # noqa: E731
    return {
        "unit_id": v.unit_id,
        "line": v.line,
        "lot": v.lot,
        "product": v.product,
        "verdict": v.verdict,
        "cause": v.cause,
        "decided_time": datetime_from_ns(v.decided_ns),
        "stations.station": [str(x or "") for x in column("station")],
        "stations.verdict": [str(x or "") for x in column("verdict")],
        "stations.score": [x if isinstance(x, (int, float)) else None for x in column("score")],
        "stations.defect": [str(x or "") for x in column("defect")],
        "stations.model_version": [str(x or "") for x in column("model_version")],
        "stations.camera": [str(x or "") for x in column("camera")],
        "missing": list(v.missing),
        "reason": v.reason,
    }


def truth_row(m: Message) -> Row:
    t = GroundTruth.from_json(m.value())
    return {
        "unit_id": t.unit_id,
        "line": t.line,
        "lot": t.lot,
        "product": t.product,
        "label": t.label,
        "defect": t.defect,
        "capture_time": datetime_from_ns(t.capture_ns),
        "source": t.source,
        "purpose": t.purpose,
    }


def shadow_row(m: Message) -> Row:
    """A shadow deployment's candidate verdict (docs/models.md): stored apart, never acted on."""
    v = ShadowVerdict.from_json(m.value())
    return {
        "unit_id": v.unit_id, "line": v.line, "camera": v.camera, "station": v.station, "product": v.product,
        "lot": v.lot, "verdict": v.verdict, "defect": v.defect, "score": v.score,
        "review_threshold": v.review_threshold, "reject_threshold": v.reject_threshold,
        "model_name": v.model_name, "model_version": v.model_version, "live_version": v.live_version,
        "capture_time": datetime_from_ns(v.capture_ns), "scored_time": datetime_from_ns(v.scored_ns),
        "shadow_id": v.shadow_id, "error": v.error, "kafka_partition": m.partition(), "kafka_offset": m.offset(),
    }


def actuation_row(m: Message) -> Row:
    a = Actuation.from_json(m.value())
    return {
        "unit_id": a.unit_id,
        "line": a.line,
        "lot": a.lot,
        "cause": a.cause,
        "defect": a.defect,
        "capture_time": datetime_from_ns(a.capture_ns),
        "command_time": datetime_from_ns(a.command_issued_ns),
        "fired_time": datetime_from_ns(a.fired_ns),
        "actuator": a.actuator,
        "purpose": a.purpose,
    }


def _opt_time(ns: int | None) -> datetime | None:
    return None if ns is None else datetime_from_ns(ns)


def gate_event_row(m: Message) -> Row:
    e = GateEventRecord.from_json(m.value())
    return {
        "unit_id": e.unit_id,
        "line": e.line,
        "lot": e.lot,
        "outcome": e.outcome,
        "cause": e.cause,
        "verdict": e.verdict,
        "admitted": e.admitted,
        "capture_time": datetime_from_ns(e.capture_ns) if e.capture_ns > 0 else None,
        "deadline_time": datetime_from_ns(e.deadline_ns),
        "fire_at_time": datetime_from_ns(e.fire_at_ns),
        "cutoff_time": datetime_from_ns(e.cutoff_ns),
        "window_start": datetime_from_ns(e.window_start_ns),
        "window_end": datetime_from_ns(e.window_end_ns),
        "verdict_time": _opt_time(e.verdict_ns),
        "acted_time": datetime_from_ns(e.acted_ns),
        "fired_time": _opt_time(e.fired_ns),
        "reason": e.reason,
        "actuator": e.actuator,
        "purpose": e.purpose,
    }


def alarm_row(m: Message) -> Row:
    a = AlarmRecord.from_json(m.value())
    return {
        "alarm_id": a.alarm_id,
        "code": a.code,
        "active": a.active,
        "raised_time": datetime_from_ns(a.raised_ns),
        "cleared_time": _opt_time(a.cleared_ns),
        "reason": a.reason,
        "clear_reason": a.clear_reason,
        "source": a.source,
        "revision": 0 if a.active else 1,
    }


def alert_row(m: Message) -> Row:
    a = AlertRecord.from_json(m.value())
    return {
        "alert_id": a.alert_id,
        "kind": a.kind,
        "severity": a.severity,
        "line": a.line,
        "state": a.state,
        "first_seen": datetime_from_ns(a.first_seen_ns),
        "last_seen": datetime_from_ns(a.last_seen_ns),
        "cleared_time": _opt_time(a.cleared_ns),
        "message": a.message,
        "value": float(a.value),
        "acknowledged_by": a.acknowledged_by,
        "acknowledged_at": _opt_time(a.acknowledged_ns),
        "revision": int(a.revision),
        "source": a.source,
    }


def reject_image_row(m: Message) -> Row:
    # A consumed record's headers are (name, bytes or None) pairs; confluent-kafka types them
    # with the wider produce-side union (dict, str values).
    headers = cast("list[tuple[str, bytes | None]]", m.headers() or [])
    jpeg = m.value() or b""
    unit = header_value(headers, H_UNIT)
    capture = header_value(headers, H_CAPTURE_NS)
    if not unit or not capture.isdigit() or not jpeg.startswith(b"\xff\xd8"):
        raise MessageError("reject image without unit id, capture time or JPEG bytes")
    return {
        "unit_id": unit,
        "line": header_value(headers, H_LINE),
        "lot": header_value(headers, H_LOT),
        "verdict": header_value(headers, H_VERDICT),
        "defect": header_value(headers, H_DEFECT),
        "station": header_value(headers, H_STATION),
        "capture_time": datetime_from_ns(int(capture)),
        "jpeg_base64": base64.b64encode(jpeg).decode("ascii"),
        "size_bytes": len(jpeg),
    }


def dead_letter_row(m: Message) -> Row:
    headers = cast("list[tuple[str, bytes | None]]", m.headers() or [])  # as in reject_image_row
    key = m.key() or b""
    return {
        "unit_id": header_value(headers, H_UNIT) or key.decode("utf-8", "replace"),
        "line": header_value(headers, H_LINE),
        "lot": header_value(headers, H_LOT),
        "reason": header_value(headers, H_DLQ_REASON) or "no reason given",
        "stage": header_value(headers, H_DLQ_STAGE),
        "source": header_value(headers, H_DLQ_SOURCE) or _source(m),
        "size_bytes": len(m.value() or b""),
        "dead_time": datetime_from_ns(m.timestamp()[1] * 1_000_000 if m.timestamp()[1] > 0 else now_ns()),
    }


def undecodable_row(m: Message, reason: str) -> Row:
    """A message the sink itself cannot store: kept as a dead letter with its reason."""
    return {
        "unit_id": "",
        "line": "",
        "lot": "",
        "reason": reason,
        "stage": "sink",
        "source": _source(m),
        "size_bytes": len(m.value() or b""),
        "dead_time": datetime_from_ns(now_ns()),
    }


class ClickHouseSink:
    """Maps each consumed topic to its table and writes a batch with one insert per table."""

    def __init__(
        self, settings: Settings, client: ClickHouseClient, audit_publisher: AuditPublisher | None = None
    ) -> None:
        k = settings.kafka
        self._settings = settings
        self._client = client
        self._db = settings.clickhouse.database
        self.routes: dict[str, tuple[str, Callable[[Message], Row]]] = {
            k.topic_results: ("inspections", self._inspection),
            k.topic_truth: ("ground_truth", truth_row),
            k.topic_actuations: ("actuations", actuation_row),
            k.topic_deadletter: ("dead_letters", dead_letter_row),
            k.topic_gate_events: ("gate_events", gate_event_row),
            k.topic_alarms: ("alarms", alarm_row),
            k.topic_alerts: ("alerts", alert_row),
            k.topic_reject_images: ("reject_images", reject_image_row),
            k.topic_unit_verdicts: ("unit_verdicts", unit_verdict_row),
            k.topic_shadow: ("shadow_inspections", shadow_row),
        }
        self.rows_written = 0
        self.audit = AuditTrail.from_settings(settings, client, audit_publisher)
        self.audit_records_written = 0
        # Decision records of the batch being written, by audit chain: (unit id, event).
        self._decisions: dict[str, list[tuple[str, AuditEvent]]] = defaultdict(list)

    def _inspection(self, m: Message) -> Row:
        """A result's row; its decision record joins the batch's audit decisions in the same pass."""
        result = InspectionResult.from_json(m.value())
        row = inspection_row(m, result)
        partition = m.partition()
        assert partition is not None  # consumed messages carry their partition
        chain = decision_chain(result.line, partition)
        event = decision_event(result, _source(m))
        self._decisions[chain].append((event.subject, event))  # a unit, or a unit's station frame
        return row

    def write(self, messages: Sequence[Message]) -> None:
        tables: dict[str, list[Row]] = defaultdict(list)
        spans: dict[str, dict[tuple[str, int], list[int]]] = defaultdict(dict)  # first, last offset; first ts
        decisions: dict[str, list[tuple[str, AuditEvent]]] = defaultdict(list)
        self._decisions = decisions
        for m in messages:
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            # Consumed (non-error) messages always carry their topic, partition and offset.
            assert topic is not None and partition is not None and offset is not None
            table, to_row = self.routes[topic]
            try:
                row = to_row(m)
            except Exception as exc:  # noqa: BLE001 - any message the sink cannot use (a bad field, a
                # timestamp no datetime holds) is a dead letter with its reason, never a dead sink
                log.warning("undecodable message at %s: %s", _source(m), exc)
                reason = str(exc) if isinstance(exc, MessageError) else f"{type(exc).__name__}: {exc}"
                table, row = "dead_letters", undecodable_row(m, f"sink could not decode: {reason}"[:4000])
            if table in SITE_TABLES:
                row["site"] = self._settings.site  # the plant: one sink per plant's topics
            tables[table].append(row)
            # The first message's timestamp tells this topic's incarnation apart from an earlier one
            # whose offsets started at 0 too (a re-created topic, a fresh embedded broker): equal
            # offsets alone would make ClickHouse drop the new block as a duplicate of the old.
            span = spans[table].setdefault((topic, partition), [offset, offset, _timestamp_ms(m)])
            span[1] = offset
        for table, rows in tables.items():
            token = table + ":" + ",".join(
                f"{t}:{p}:{a}-{b}@{ts}" for (t, p), (a, b, ts) in sorted(spans[table].items())
            )
            self._client.insert_json_rows(
                f"{self._db}.{table}", rows, settings={"insert_deduplication_token": token}
            )
            self.rows_written += len(rows)
        self._audit_decisions(decisions)

    def _audit_decisions(self, decisions: dict[str, list[tuple[str, AuditEvent]]]) -> None:
        """Each decision once to its chain, in offset order (units already in it are skipped): appended
        directly, or submitted to the audit service (`audit.append_via=topic`) and durable on the
        audit-events topic before the batch is committed; the audit service skips a redelivered one."""
        if not decisions:
            return
        units = sorted({u for evs in decisions.values() for u, _ in evs})
        done = self.audit.store.existing_subjects(sorted(decisions), DECISION_ACTION, units)
        todo: dict[str, list[AuditEvent]] = {}
        for chain, evs in decisions.items():
            seen: set[str] = set()
            for unit, ev in evs:
                if (chain, unit) not in done and unit not in seen:
                    seen.add(unit)
                    todo.setdefault(chain, []).append(ev)
        self.audit_records_written += self.audit.submit_many(todo)


def run_sink(settings: Settings, client: ClickHouseClient, stop: threading.Event, health: HealthState) -> None:
    """Consume until `stop`; commits only after ClickHouse accepted each batch."""
    sink = ClickHouseSink(settings, client, AuditPublisher(settings) if settings.audit.append_via == "direct" else None)
    consumer = make_consumer(settings.kafka, settings.services.sink_group, "linesight-sink")
    ch = settings.clickhouse
    run_batches(
        consumer,
        list(sink.routes),
        sink.write,
        health,
        stop,
        max_batch=ch.insert_batch_rows,
        max_wait_s=ch.insert_interval_s,
        group=settings.services.sink_group,
    )
