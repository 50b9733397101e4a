"""Electronic signatures: a signer re-enters the password and states the meaning; the signature is
a record in the ``system`` chain bound to the sha256 of the record it signs (docs/audit.md)."""

from __future__ import annotations

from pipeline.audit.record import SIGN_ACTION, AuditEvent, AuditRecord, parse_record_id
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal

MEANINGS = ("reviewed", "approved")


def sign_record(
    trail: AuditTrail,
    guard: Guard,
    who: Principal,
    record_id: str,
    meaning: str,
    reason: str = "",
    expected_hash: str | None = None,
    own_action: str | None = None,
) -> AuditRecord:
    """Sign ``record_id`` for an authenticated ``who``; refusals are audited by the guard.

    With ``own_action``, a person signs a record of their own of that action (a review decision
    signed by the operator who made it) under that action's permission instead of ``audit.sign``,
    which is QA's: signing one's own decision is not releasing someone else's work."""
    guard.authorize(who, own_action or "audit.sign", record_id)
    if meaning not in MEANINGS:
        raise guard.refuse(who.username, who.role, "audit.sign", record_id,
                           f"unknown signature meaning {meaning!r}: one of {', '.join(MEANINGS)}")
    try:
        chain, seq = parse_record_id(record_id)
    except ValueError as exc:
        raise guard.refuse(who.username, who.role, "audit.sign", record_id, str(exc)) from None
    found = trail.store.get(chain, seq)
    if not found:
        raise guard.refuse(who.username, who.role, "audit.sign", record_id, f"no audit record {record_id}")
    if len(found) > 1:
        raise guard.refuse(who.username, who.role, "audit.sign", record_id,
                           f"record {record_id} is stored {len(found)} times: the trail is broken, run audit verify")
    target = found[0]
    actual = target.compute_hash()
    if actual != target.record_hash:
        raise guard.refuse(who.username, who.role, "audit.sign", record_id,
                           f"record {record_id} was changed after it was written (stored hash "
                           f"{target.record_hash}, content hashes to {actual}): it cannot be signed")
    if expected_hash is not None and not target.record_hash.startswith(expected_hash.lower()):
        raise guard.refuse(who.username, who.role, "audit.sign", record_id,
                           f"record {record_id} is not the record reviewed: its hash is {target.record_hash}, "
                           f"the signer reviewed {expected_hash}")
    if own_action is not None and (target.action != own_action or target.user != who.username):
        raise guard.refuse(who.username, who.role, "audit.sign", record_id,
                           f"{record_id} is not a {own_action} record of {who.username}: it needs audit.sign")
    if target.action == SIGN_ACTION:
        raise guard.refuse(who.username, who.role, "audit.sign", record_id,
                           f"{record_id} is itself a signature; sign the record it signs")
    return trail.record(AuditEvent(
        SIGN_ACTION, subject=record_id, user=who.username, role=who.role, new_value=meaning, reason=reason,
        detail={"signed_hash": target.record_hash, "signed_action": target.action, "meaning": meaning,
                "signed_subject": target.subject},
    ))
