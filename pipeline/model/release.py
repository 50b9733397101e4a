"""Model release and rollback as attributable, signed GMP actions (docs/audit.md).

The caller authenticated the user (password re-entered); here the role's permission is checked,
a reason is required, the deploy or rollback runs (`pipeline.model.deploy`), and the outcome is
recorded: ``model.deploy``/``model.rollback`` (old and new version) with an electronic signature
bound to that record, or ``model.deploy.failed``/``model.rollback.failed`` with the error.
"""

from __future__ import annotations

from pipeline.audit.record import AuditEvent, AuditRecord
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal
from pipeline.auth.signatures import MEANINGS, sign_record
from pipeline.settings import Settings


def release_model(
    settings: Settings,
    trail: AuditTrail,
    guard: Guard,
    who: Principal,
    action: str,
    target: str,
    version: int | None,
    reason: str,
    meaning: str = "approved",
) -> tuple[object, AuditRecord, AuditRecord]:
    """Deploy ``version`` of ``target`` (or roll back); returns (DeployResult, record, signature)."""
    from pipeline.model.deploy import DeployError, deploy, rollback

    permission = f"model.{action}"
    guard.authorize(who, permission, target)
    if not reason.strip():
        raise guard.refuse(who.username, who.role, permission, target, f"a reason is required to {action} a model")
    if meaning not in MEANINGS:
        raise guard.refuse(who.username, who.role, permission, target,
                           f"unknown signature meaning {meaning!r}: one of {', '.join(MEANINGS)}")
    try:
        if action == "deploy":
            if version is None:
                raise DeployError("a version is required")
            result = deploy(settings, target, version, reason, user=who.username)
        else:
            result = rollback(settings, target, reason, user=who.username)
    except DeployError as exc:
        trail.record(AuditEvent(
            f"{permission}.failed", subject=target, user=who.username, role=who.role,
            new_value="" if version is None else str(version), reason=reason, detail={"error": str(exc)},
        ))
        raise
    record = trail.record(AuditEvent(
        permission, subject=result.classifier, user=who.username, role=who.role,
        old_value="" if result.from_version is None else str(result.from_version), new_value=str(result.to_version),
        reason=reason, detail={"product": result.product, "model": result.classifier, "triton": result.triton},
    ))
    signature = sign_record(trail, guard, who, record.record_id, meaning, reason)
    return result, record, signature
