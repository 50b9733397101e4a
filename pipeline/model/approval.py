"""Whether a model version carries an approved validation report: what `models deploy` asks.

The validation report (docs/validation.md, "Validation report") is written next to the version
(`validation_report.json` and `.pdf`) by `pipeline.validation.report`, and a QA approval, an
e-signature in the audit trail, leaves `validation_approval.json` beside it with the sha256 of
both files as they were approved. This module only reads those files, so a deploy (model layer,
no database) can refuse a version without one, naming exactly what is missing; the signed
records themselves are checked against the trail where one is at hand (`pipeline.model.release`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.hashing import sha256_file

if TYPE_CHECKING:
    from pipeline.audit.record import AuditRecord
    from pipeline.audit.trail import AuditTrail

REPORT_JSON = "validation_report.json"
REPORT_PDF = "validation_report.pdf"
APPROVAL_JSON = "validation_approval.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """The object in `path`, or None when the file is absent or not a JSON object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def report_problems(version_dir: Path, onnx_sha256: str | None = None) -> list[str]:
    """Why the version in `version_dir` has no usable approved validation report ([] when it has).

    `onnx_sha256`: the card's model.onnx hash; a report made on another artifact does not count.
    """
    report_path, pdf_path = version_dir / REPORT_JSON, version_dir / REPORT_PDF
    hint = f"(linesight validation report PRODUCT --version {version_dir.name} --testset NAME)"
    if not report_path.is_file():
        return [f"no validation report {hint}"]
    report = read_json(report_path)
    if report is None:
        return [f"the validation report {report_path} is unreadable"]
    problems: list[str] = []
    if onnx_sha256 and (report.get("model") or {}).get("onnx_sha256") != onnx_sha256:
        problems.append("the validation report was made on another model.onnx than the version's")
    if report.get("passed") is not True:
        failed = [str(f) for f in (report.get("judgement") or {}).get("failed") or []]
        problems.append("acceptance criteria failed: " + ("; ".join(failed) or "the report does not record a pass"))
    approval = read_json(version_dir / APPROVAL_JSON)
    if approval is None:
        problems.append("report not approved (linesight validation approve: a QA e-signature)")
        return problems
    if approval.get("report_sha256") != sha256_file(report_path):
        problems.append("report changed after approval (validation_report.json no longer hashes to the approved sha256)")
    if not pdf_path.is_file() or approval.get("pdf_sha256") != sha256_file(pdf_path):
        problems.append("report changed after approval (validation_report.pdf is missing or no longer the approved file)")
    return problems


def trail_problems(trail: AuditTrail, version_dir: Path, subject: str) -> list[str]:
    """Why the approval file of `version_dir` is not backed by the audit trail ([] when it is, or
    when there is no approval file: `report_problems` names that).

    The file could be written by anyone with access to the repository; the trail's
    ``validation.approve`` record and its ``approved`` e-signature cannot."""
    from pipeline.audit.record import SIGN_ACTION, parse_record_id

    approval = read_json(version_dir / APPROVAL_JSON)
    if approval is None:
        return []

    def record(rid: object) -> AuditRecord | None:
        try:
            found = trail.store.get(*parse_record_id(str(rid)))
        except ValueError:
            return None
        return found[0] if len(found) == 1 else None

    approved, signature = record(approval.get("approval_record")), record(approval.get("signature"))
    if (approved is None or approved.action != "validation.approve" or approved.subject != subject
            or approved.new_value != approval.get("report_sha256")):
        return [f"report approval {approval.get('approval_record')} is not in the audit trail as the approval of "
                f"{subject} with the report's sha256"]
    detail = signature.detail_dict() if signature is not None else {}
    if (signature is None or signature.action != SIGN_ACTION or signature.subject != approved.record_id
            or detail.get("signed_hash") != approved.record_hash or detail.get("meaning") != "approved"):
        return [f"report approval {approved.record_id} has no 'approved' e-signature in the audit trail"]
    return []
