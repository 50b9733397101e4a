"""Inspection decisions as audit events: one record per unit, chained per line and results partition.

The sink calls `decision_events` for the results it stores. Chain ``decisions/<line>/p<partition>``
has exactly one writer (the sink consumer that owns the partition) and a defined order (Kafka
offsets). Results are keyed by unit id, so a unit always lands in the same partition and chain:
a redelivered or republished result of a unit already in its chain is skipped (same unit, same
record, no second link). On a multi-station line each station's frame is a decision of its own:
its subject is ``<unit id>@<station>``.
"""

from __future__ import annotations

from pipeline.audit.record import DECISION_ACTION, AuditEvent
from pipeline.core.times import datetime_from_ns
from pipeline.wire.messages import InspectionResult


def decision_chain(line: str, partition: int) -> str:
    return f"decisions/{line or 'unknown'}/p{partition}"


def decision_event(r: InspectionResult, source: str) -> AuditEvent:
    """The audit event of one verdict (who: the worker running the model; when: the verdict time)."""
    why = ("; ".join(r.reasons) or f"{r.cause}: {r.defect}") if r.verdict != "pass" else r.cause
    return AuditEvent(
        action=DECISION_ACTION,
        subject=f"{r.unit_id}@{r.station}" if r.station else r.unit_id,
        user=f"worker:{r.worker}" if r.worker else "worker",
        role="system",
        new_value=r.verdict,
        reason=r.error or why,
        time=datetime_from_ns(r.inferred_ns),
        detail={
            "unit_id": r.unit_id, "line": r.line, "camera": r.camera, "product": r.product, "lot": r.lot,
            "verdict": r.verdict, "cause": r.cause, "inspected": r.inspected, "defect": r.defect,
            "score": r.score, "threshold": r.threshold, "review_threshold": r.review_threshold,
            "model_name": r.model_name, "model_version": r.model_version, "image_sha256": r.image_sha256,
            "capture_ns": r.capture_ns, "source": source, **({"station": r.station} if r.station else {}),
            # Recipe-judged units: which recipe, what was measured, per-pocket verdicts.
            **({"recipe": r.recipe, "measurements": r.measurements, "parts": r.parts} if r.recipe else {}),
            # A challenge unit's decision says so (docs/validation.md); production records are unchanged.
            **({"purpose": r.purpose} if r.purpose else {}),
        },
    )
