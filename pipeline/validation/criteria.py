"""Acceptance criteria of a validation report, recorded (signed) before the test.

Criteria set after the figures are known prove nothing, so QA records them first, per model
version, with an e-signature: ``<version dir>/validation_criteria.json`` and a
``validation.criteria`` audit record. Recording is refused once a test set was read for that
version, and the report refuses criteria recorded after the version's first test-set read. The
overall rates are judged exactly as the release gate judges them (`pipeline.model.release.judge`:
review counts as removed); the report adds a detection rate per defect class the model rejects
(a class with no test unit is not measured and fails) and the ONNX parity record.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.audit.record import AuditEvent, AuditRecord
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal
from pipeline.model import repository
from pipeline.model.approval import read_json
from pipeline.model.release import AcceptanceCriteria, judge
from pipeline.validation.testsets import reads_of

ACTION = "validation.criteria"
CRITERIA_FILE = "validation_criteria.json"


class CriteriaError(ValueError):
    """Criteria that cannot be recorded or used; the message says why."""


@dataclass(frozen=True)
class ValidationCriteria:
    """What the version must show on the independent test set (fractions; None: not judged)."""

    min_detection: float | None = None
    min_class_detection: float | None = None  # each defect class the model rejects
    max_false_reject: float | None = None
    max_review: float | None = None
    min_auroc: float | None = None
    require_parity: bool = True

    def __post_init__(self) -> None:
        rates = {k: v for k, v in asdict(self).items() if k != "require_parity"}
        for name, value in rates.items():
            if value is not None and not (isinstance(value, int | float) and 0.0 <= float(value) <= 1.0):
                raise CriteriaError(f"criterion {name} must be a fraction in [0, 1], got {value!r}")
        if all(v is None for v in rates.values()):
            raise CriteriaError("the criteria name no rate: a validation must judge something")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_mapping(cls, doc: dict[str, Any]) -> ValidationCriteria:
        unknown = sorted(set(doc) - set(cls.__dataclass_fields__))
        if unknown:
            raise CriteriaError(f"unknown criteria: {', '.join(unknown)} (known: {', '.join(cls.__dataclass_fields__)})")
        return cls(**doc)

    @classmethod
    def from_toml(cls, path: Path) -> ValidationCriteria:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CriteriaError(f"criteria file {path}: {exc}") from None
        return cls.from_mapping(doc.get("criteria", doc))


def criteria_path(repo: Path, classifier: str, version: int) -> Path:
    return repository.version_dir(repo, classifier, version) / CRITERIA_FILE


def record_criteria(
    repo: Path, trail: AuditTrail, guard: Guard, who: Principal, classifier: str, version: int,
    criteria: ValidationCriteria, reason: str, meaning: str = "approved",
) -> tuple[dict[str, Any], AuditRecord, AuditRecord]:
    """Record (audit, e-sign, write) the criteria of `classifier` `version` before its test."""
    from pipeline.auth.signatures import sign_record

    subject = f"{classifier}@v{version}"
    guard.authorize(who, ACTION, subject)
    if not reason.strip():
        raise guard.refuse(who.username, who.role, ACTION, subject, "a reason is required")
    if version not in repository.versions(repo, classifier):
        raise CriteriaError(f"{classifier} has no version {version}")
    tested = reads_of(trail, classifier, version)
    if tested:
        raise CriteriaError(f"{subject}: a test set was already read for this version ({tested[0].record_id} at "
                            f"{tested[0].time:%Y-%m-%d %H:%M:%S} UTC): criteria must be set before the test")
    path = criteria_path(repo, classifier, version)
    previous = read_json(path)
    record = trail.record(AuditEvent(
        ACTION, subject=subject, user=who.username, role=who.role,
        old_value=json.dumps(previous["criteria"], sort_keys=True) if previous else "",
        new_value=json.dumps(criteria.as_dict(), sort_keys=True), reason=reason,
        detail={"model": classifier, "version": version, "criteria": criteria.as_dict()},
    ))
    signature = sign_record(trail, guard, who, record.record_id, meaning, reason)
    doc = {
        "model": classifier, "version": version, "criteria": criteria.as_dict(),
        "recorded_utc": record.time.astimezone(UTC).isoformat(timespec="microseconds"),
        "recorded_by": who.username, "reason": reason, "audit_record": record.record_id,
        "signature": signature.record_id,
    }
    repository.write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())
    return doc, record, signature


def recorded_criteria(repo: Path, classifier: str, version: int) -> tuple[ValidationCriteria, dict[str, Any]]:
    """The version's recorded criteria and their record (CriteriaError when none were recorded)."""
    doc = read_json(criteria_path(repo, classifier, version))
    if doc is None:
        raise CriteriaError(f"no acceptance criteria recorded for {classifier} version {version}: record them "
                            "before the test (linesight validation criteria)")
    return ValidationCriteria.from_mapping(doc["criteria"]), doc


def recorded_time(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(doc["recorded_utc"])


def _fmt(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.2f} %"


def judge_report(
    criteria: ValidationCriteria, metrics: dict[str, Any], parity: dict[str, Any] | None, classes: list[str],
) -> list[dict[str, Any]]:
    """Each criterion with its limit, the measured figure and pass/fail, in the report's words.

    `classes`: the defect classes the model rejects (the per-class criterion covers each)."""
    shared = {k: getattr(criteria, k) for k in ("min_detection", "max_false_reject", "max_review", "min_auroc")}
    checks: list[dict[str, Any]] = []
    if any(v is not None for v in shared.values()):
        gate = judge(metrics, AcceptanceCriteria(**shared), "recorded criteria", "the independent test set")
        for c in gate.checks:
            checks.append({"criterion": c.criterion, "metric": c.metric, "comparison": c.comparison,
                           "limit": c.limit, "measured": c.measured, "passed": c.passed, "text": c.text()})
    if criteria.min_class_detection is not None:
        recall = metrics.get("per_class_recall") or {}
        for name in classes:
            raw = recall.get(name)
            measured = float(raw) if isinstance(raw, int | float) and not math.isnan(float(raw)) else None
            passed = measured is not None and measured >= criteria.min_class_detection
            checks.append({
                "criterion": "min_class_detection", "metric": f"detection_rate[{name}]", "comparison": ">=",
                "limit": criteria.min_class_detection, "measured": measured, "passed": passed,
                "text": f"detection of {name} {_fmt(measured)} (limit >= {_fmt(criteria.min_class_detection)}): "
                        + ("pass" if passed else "FAIL" + ("" if measured is not None else ", no test unit of it")),
            })
    if criteria.require_parity:
        passed = isinstance(parity, dict) and parity.get("passed") is True
        diff = (parity or {}).get("max_abs_diff_score", (parity or {}).get("max_abs_diff"))
        checks.append({
            "criterion": "require_parity", "metric": "parity.passed", "comparison": "==", "limit": 1.0,
            "measured": 1.0 if passed else 0.0, "passed": passed,
            "text": f"ONNX/original parity {'passed' if passed else 'not passed'}"
                    + (f" (max |dSCORE| {float(diff):.3g})" if isinstance(diff, int | float) else "")
                    + f": {'pass' if passed else 'FAIL'}",
        })
    return checks
