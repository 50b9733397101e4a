"""The validation report of one model version, and its QA approval (docs/validation.md).

`make_report` gathers what a QA unit signs off a version on: its intended use (product, the
product's recipes and stations, defect classes, input space), its training data hash, the
independent test set (registered and locked, `pipeline.validation.testsets`; its read is
audited), the acceptance criteria recorded before the test (`pipeline.validation.criteria`),
the results at the version's own thresholds (its model.onnx scored with onnxruntime and the
serving preprocessing, `pipeline.model.heldout.evaluate_folder`), the ONNX parity record, and
the Knapp study and challenge runs given to it ("none recorded" otherwise). It writes
``<version dir>/validation_report.json`` and ``.pdf`` and a ``validation.report`` audit record
holding both files' sha256. `approve_report` is the QA e-signature (meaning ``approved``): refused
for a report whose criteria failed or whose files no longer hash to what was generated; it
leaves ``validation_approval.json``, which `linesight models deploy` requires
(`pipeline.model.approval`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.audit.record import AuditEvent, AuditRecord
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal
from pipeline.core.hashing import sha256_file
from pipeline.model import repository
from pipeline.model.approval import APPROVAL_JSON, REPORT_JSON, REPORT_PDF, read_json
from pipeline.validation.criteria import CriteriaError, judge_report, recorded_criteria, recorded_time
from pipeline.validation.testsets import load_registry, read_testset, reads_of

if TYPE_CHECKING:
    from pipeline.recipes.schema import Recipe

REPORT_ACTION = "validation.report"
APPROVE_ACTION = "validation.approve"
SCHEMA = "linesight.validation_report/1"
METHOD = ("offline: the version's model.onnx run with onnxruntime (CPU) on every test image after the "
          "serving preprocessing (pipeline.model.preprocess), judged at the THRESHOLDS baked into the "
          "artifact; review counts as removed (the gate rejects it)")
NONE_RECORDED = "none recorded"


class ReportError(ValueError):
    """A report that cannot be made or approved; the message says why (nothing was written)."""


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _input_space(repo: Path, classifier: str, version: int, card: dict[str, Any]) -> dict[str, Any]:
    from pipeline.model.export import input_geometry

    config = repository.read_config(repo, classifier)
    h, w = input_geometry(repository.version_dir(repo, classifier, version) / repository.ONNX_FILE)
    geometry = card.get("geometry") if isinstance(card.get("geometry"), dict) else {}
    return {
        "frames": "PNG or JPEG camera frames of one unit, decoded and resized by the serving preprocessing",
        "model_input": f"float32 [N, 3, {h}, {w}], pixels normalised to [-2, 2]",
        "height": h, "width": w,
        "frame_size": geometry.get("frame") if geometry else None,
        "invariance": card.get("invariance") or repository.parameter(config, repository.INVARIANCE_PARAM)
        or "not recorded",
        "test_time_views": card.get("test_time_views"),
        # The ranges of the unit's descriptors outside which a pass becomes review (docs/models.md).
        "reference": card.get("input_space") if isinstance(card.get("input_space"), dict) else None,
    }


def _intended_use(product: str, card: dict[str, Any], recipes: Sequence[Recipe], input_space: dict[str, Any]
                  ) -> dict[str, Any]:
    classes = [c for c in card.get("classes") or [] if c != "good"]
    return {
        "product": product,
        "statement": (f"automated 100 % visual inspection of {product} units: each unit is passed, sent to "
                      f"a person (review) or rejected for the defect classes {', '.join(classes) or 'none'}"),
        "defect_classes": classes,
        "recipes": [r.ref for r in recipes] or NONE_RECORDED,
        # per recipe: its [[station]] names, or one camera
        "stations": {r.ref: [s.name for s in r.stations] or ["one camera"] for r in recipes} or NONE_RECORDED,
        "input_space": input_space,
    }


def _training_data(vdir: Path, card: dict[str, Any]) -> dict[str, Any]:
    hashes = vdir / repository.TRAINING_HASHES
    data: dict[str, Any] = card["dataset"] if isinstance(card.get("dataset"), dict) else {}
    return {
        "training_images_sha256_file": hashes.name if hashes.is_file() else NONE_RECORDED,
        "training_images_sha256": sha256_file(hashes) if hashes.is_file() else None,
        "training_images": sum(1 for line in hashes.read_text().splitlines() if line.strip()) if hashes.is_file()
        else None,
        "source": data.get("source") or data.get("path") or NONE_RECORDED,
        "train_sha256": (data.get("train") or {}).get("sha256") if isinstance(data.get("train"), dict)
        else data.get("content_hash"),
        "validation_sha256": (data.get("validation") or {}).get("sha256")
        if isinstance(data.get("validation"), dict) else None,
    }


def _knapp(path: Path | None, classifier: str, version: int) -> dict[str, Any] | str:
    if path is None:
        return NONE_RECORDED
    doc = read_json(Path(path))
    if doc is None:
        raise ReportError(f"the Knapp study {path} is not a knapp.json")
    judged = (doc.get("classifier"), doc.get("model_version"))
    out = {"file": str(path), "sha256": sha256_file(Path(path)), "verdict": doc.get("verdict"),
           "figures": {k: (doc.get("figures") or {}).get(k) for k in ("rze", "fq_manual", "fq_machine",
                                                                       "reject_zone_units")},
           "false_reject": doc.get("false_reject"), "generated": doc.get("generated"),
           "model": f"{judged[0]} version {judged[1]}"}
    if judged != (classifier, version):
        raise ReportError(f"the Knapp study {path} judged {judged[0]} version {judged[1]}, not {classifier} "
                          f"version {version}")
    return out


def _independence(vdir: Path, dataset: Any) -> dict[str, Any]:
    path = vdir / repository.TRAINING_HASHES
    trained = {x.strip() for x in path.read_text().splitlines() if x.strip()} if path.is_file() else set()
    shared = sum(1 for r in dataset.rows if hashlib.sha256(r.image.read_bytes()).hexdigest() in trained)
    if not path.is_file():
        return {"checked_against": NONE_RECORDED, "images_shared_with_training": None, "passed": True,
                "text": f"test images shared with training: not checked (the version records no {path.name}; "
                        "the test set's lock refuses training on it since its registration)"}
    return {"checked_against": path.name, "images_shared_with_training": shared, "passed": shared == 0,
            "text": (f"test images shared with the training/calibration images: {shared}: "
                     + ("pass" if shared == 0 else "FAIL (not an independent test)"))}


def make_report(
    settings: Any, trail: AuditTrail, guard: Guard, who: Principal, product: str, classifier: str, version: int,
    testset: str, recipes: Sequence[Recipe] = (), knapp: Path | None = None,
    challenges: list[dict[str, Any]] | None = None, reason: str = "",
) -> tuple[dict[str, Any], AuditRecord]:
    """Evaluate `version` on the locked `testset`, judge the recorded criteria, write the report
    (JSON + PDF) next to the version and record its hashes (`validation.report`)."""
    from pipeline.model.deploy import card_onnx_sha256, card_thresholds
    from pipeline.model.heldout import evaluate_folder
    from pipeline.validation.report_pdf import render_pdf

    repo = Path(settings.triton.model_repository)
    subject = f"{classifier}@v{version}"
    guard.authorize(who, REPORT_ACTION, subject)
    if version not in repository.versions(repo, classifier):
        raise ReportError(f"{classifier} has no version {version} (released: {repository.versions(repo, classifier)})")
    vdir = repository.version_dir(repo, classifier, version)
    card = repository.read_card(repo, classifier, version)
    try:
        criteria, criteria_doc = recorded_criteria(repo, classifier, version)
    except CriteriaError as exc:
        raise ReportError(str(exc)) from None
    earlier = reads_of(trail, classifier, version)
    first = _aware(earlier[0].time) if earlier else datetime.now(UTC)
    if recorded_time(criteria_doc) >= first:
        raise ReportError(f"the acceptance criteria of {subject} were recorded at {criteria_doc['recorded_utc']}, "
                          f"after its test set was first read ({earlier[0].record_id}): criteria must precede the test")
    knapp_study = _knapp(knapp, classifier, version)  # refused before the locked set is read
    registered = load_registry(settings).get(testset)
    if registered is not None and registered.product != product:
        raise ReportError(f"test set {testset!r} is of product {registered.product!r}, not {product!r}")
    why = reason or f"validation report of {subject}"
    entry, dataset, read = read_testset(settings, trail, who, testset, why,
                                        {"model": classifier, "version": version, "purpose": REPORT_ACTION})
    onnx = vdir / repository.ONNX_FILE
    metrics: dict[str, Any] = evaluate_folder(onnx, dataset.root, product)
    review, reject = card_thresholds(card)
    served = metrics["thresholds"]
    if metrics["model_version"] != version or (reject is not None and abs(served[1] - reject) > 1e-6) or (
            review is not None and abs(served[0] - review) > 1e-6):
        raise ReportError(f"{onnx} reports version {metrics['model_version']} and thresholds {served}, its card "
                          f"{version} and {[review, reject]}: run `linesight models list` to see why")
    classes = [c for c in card.get("classes") or [] if c != "good"]
    checks = judge_report(criteria, metrics, card.get("parity"), classes)
    independence = _independence(vdir, dataset)
    failed = [c["text"] for c in checks if not c["passed"]] + ([] if independence["passed"] else [independence["text"]])
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "generated_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "generated_by": who.username,
        "model": {"product": product, "classifier": classifier, "version": version,
                  "onnx_sha256": card_onnx_sha256(card), "card_created_utc": card.get("created_utc"),
                  "mode": card.get("mode"), "code_version": card.get("code_version")},
        "intended_use": _intended_use(product, card, recipes, _input_space(repo, classifier, version, card)),
        "training_data": _training_data(vdir, card),
        "test_set": {"name": entry.name, "path": entry.path, "sha256": entry.sha256, "units": entry.units,
                     "defects": entry.defects, "classes": entry.classes, "registered_by": entry.registered_by,
                     "registered_at": entry.registered_at, "registration_record": entry.audit_record,
                     "read_record": read.record_id, "independence": independence},
        "criteria": {**criteria_doc["criteria"], "recorded_utc": criteria_doc["recorded_utc"],
                     "recorded_by": criteria_doc["recorded_by"], "audit_record": criteria_doc["audit_record"],
                     "signature": criteria_doc["signature"]},
        "evaluation": {"method": METHOD, "thresholds": {"review": served[0], "reject": served[1]},
                       "metrics": {k: v for k, v in metrics.items() if k not in ("data", "thresholds")}},
        "judgement": {"checks": checks, "failed": failed},
        "passed": not failed,
        "parity": card.get("parity") if isinstance(card.get("parity"), dict) else NONE_RECORDED,
        "knapp": knapp_study,
        "challenges": challenges or NONE_RECORDED,
    }
    json_path, pdf_path = vdir / REPORT_JSON, vdir / REPORT_PDF
    (vdir / APPROVAL_JSON).unlink(missing_ok=True)  # a new report needs its own approval
    repository.write_atomic(json_path, (json.dumps(report, indent=2, default=str) + "\n").encode())
    render_pdf(report, pdf_path)
    record = trail.record(AuditEvent(
        REPORT_ACTION, subject=subject, user=who.username, role=who.role, new_value=sha256_file(json_path),
        reason=why, detail={"report_sha256": sha256_file(json_path), "pdf_sha256": sha256_file(pdf_path),
                            "passed": report["passed"], "failed": failed, "test_set": entry.name,
                            "test_set_sha256": entry.sha256, "criteria_record": criteria_doc["audit_record"]},
    ))
    return report, record


def latest_report_record(trail: AuditTrail, classifier: str, version: int) -> AuditRecord | None:
    subject = f"{classifier}@v{version}"
    found = [r for r in trail.store.by_action(REPORT_ACTION) if r.subject == subject]
    return max(found, key=lambda r: (r.time, r.seq)) if found else None


def approve_report(
    repo: Path, trail: AuditTrail, guard: Guard, who: Principal, classifier: str, version: int, reason: str,
) -> tuple[dict[str, Any], AuditRecord, AuditRecord]:
    """QA's e-signature (meaning ``approved``) on the version's report, as generated and passed."""
    from pipeline.auth.signatures import sign_record

    subject = f"{classifier}@v{version}"
    guard.authorize(who, APPROVE_ACTION, subject)
    if not reason.strip():
        raise guard.refuse(who.username, who.role, APPROVE_ACTION, subject, "a reason is required")
    vdir = repository.version_dir(repo, classifier, version)
    json_path, pdf_path = vdir / REPORT_JSON, vdir / REPORT_PDF
    report = read_json(json_path)
    generated = latest_report_record(trail, classifier, version)
    if report is None or generated is None or not pdf_path.is_file():
        raise ReportError(f"no validation report of {subject} to approve (linesight validation report)")
    made = generated.detail_dict()
    actual = (sha256_file(json_path), sha256_file(pdf_path))
    if actual != (made.get("report_sha256"), made.get("pdf_sha256")):
        raise ReportError(f"the report of {subject} changed after it was generated ({generated.record_id} records "
                          f"{made.get('report_sha256')} / {made.get('pdf_sha256')}, the files hash to "
                          f"{actual[0]} / {actual[1]}): generate it again")
    if report.get("passed") is not True:
        raise ReportError(f"refusing to approve the report of {subject}: acceptance criteria failed: "
                          + "; ".join((report.get("judgement") or {}).get("failed") or []))
    record = trail.record(AuditEvent(
        APPROVE_ACTION, subject=subject, user=who.username, role=who.role, new_value=actual[0], reason=reason,
        detail={"report_sha256": actual[0], "pdf_sha256": actual[1], "report_record": generated.record_id},
    ))
    signature = sign_record(trail, guard, who, record.record_id, "approved", reason)
    approval = {"model": classifier, "version": version, "report_sha256": actual[0], "pdf_sha256": actual[1],
                "report_record": generated.record_id, "approved_by": who.username,
                "approved_utc": _aware(record.time).isoformat(timespec="seconds"), "reason": reason,
                "approval_record": record.record_id, "signature": signature.record_id}
    repository.write_atomic(vdir / APPROVAL_JSON, (json.dumps(approval, indent=2) + "\n").encode())
    return approval, record, signature


def challenge_rows(client: Any, database: str, recipes: Sequence[Recipe], limit: int = 20) -> list[dict[str, Any]]:
    """The latest challenge runs of the product's recipes (`challenge_runs`), newest first."""
    ids = sorted({r.id for r in recipes})
    if not ids:
        return []
    rows = client.query(
        f"SELECT line, lot, phase, recipe, set_id, passed, defects_rejected, defects, good_removed, good_review, "
        f"good, user, finished_time, audit_record FROM {database}.challenge_runs "
        f"WHERE splitByChar('@', recipe)[1] IN {{ids:Array(String)}} ORDER BY finished_time DESC LIMIT {int(limit)}",
        {"ids": ids},
    ).named()
    return [{k: (str(v) if k == "finished_time" else v) for k, v in r.items()} for r in rows]
