"""Recording what a person decided: a review unit's decision and the sample of a lot's recovered
units, each e-signed (password re-entered for that decision) and kept twice: in the audit trail
(``review.decide`` / ``review.sample``, with the signature record bound to its hash) and in
ClickHouse (``review_decisions`` / ``review_samples``) for the batch record and the analysts.

Every refusal (wrong password, a role that may not decide, a machine reject, another lot's unit,
a unit already decided) is recorded by the guard in the audit trail before the caller sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.audit.record import AuditEvent, AuditRecord
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import AccessDenied, Guard, Principal
from pipeline.auth.signatures import sign_record
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.aql import SamplePlanError
from pipeline.recipes.schema import ReviewSpec
from pipeline.review.lot_rules import lot_recipe
from pipeline.review.rules import DEFECT, refusal, status
from pipeline.review.store import QueueUnit, ReviewSummary, find_unit, summarize

DECIDE = "review.decide"
SAMPLE = "review.sample"


class ReviewRefused(AccessDenied):
    """A decision or sample result that was not recorded; the message says why (already audited)."""


@dataclass(frozen=True)
class Recorded:
    record: AuditRecord
    signature: AuditRecord


@dataclass
class ReviewDesk:
    """Where decisions are recorded; `review_spec` gives the [review] table of a recipe ref (id@vN)."""

    client: ClickHouseClient
    db: str
    trail: AuditTrail
    guard: Guard
    review_spec: Callable[[str], ReviewSpec]
    site: str = ""  # the `site` setting, stamped on each decision row (docs/scale.md)

    def lot_rules(self, lot: str) -> ReviewSpec:
        """The [review] rules of the recipe that judged most of the lot."""
        return self.review_spec(lot_recipe(self.client, self.db, lot))

    def lot_summary(self, lot: str) -> ReviewSummary:
        return summarize(self.client, self.db, lot, self.lot_rules(lot))

    def _signer(self, who: Principal, password: str, action: str, subject: str) -> None:
        """The e-signature's authentication: the logged-in person re-enters their own password."""
        signer = self.guard.authenticate(who.username, password, action, subject)
        if signer != who:
            raise self.guard.refuse(who.username, who.role, action, subject,
                                    f"signature of {signer.username} ({signer.role}) on a session of {who.username}")
        self.guard.authorize(who, action, subject)

    def _refuse(self, who: Principal, action: str, subject: str, reason: str) -> ReviewRefused:
        return ReviewRefused(str(self.guard.refuse(who.username, who.role, action, subject, reason)))

    def decide(self, who: Principal, password: str, lot: str, unit_id: str, decision: str, defect: str = "",
               seconds_spent: float = 0.0, comment: str = "") -> Recorded:
        """Record one decision on a review unit of `lot` (refusals raise ReviewRefused, audited)."""
        self._signer(who, password, DECIDE, unit_id)
        found = find_unit(self.client, self.db, unit_id)
        spec = self.review_spec(found.recipe) if found else ReviewSpec()
        reason = refusal(found.unit if found else None, unit_id, lot, decision, defect, who.role,
                         found.classes() if found else [], spec.qa_confirms)
        if reason:
            raise self._refuse(who, DECIDE, unit_id, reason)
        assert found is not None  # refusal() names a missing unit
        before = status(found.unit, spec.qa_confirms)
        record = self.trail.record(AuditEvent(
            DECIDE, subject=unit_id, user=who.username, role=who.role, old_value=f"{found.unit.verdict} ({before})",
            new_value=f"{decision}:{defect}" if decision == DEFECT else decision, reason=comment,
            detail=_detail(found, lot, seconds_spent, before),
        ))
        meaning = "approved" if who.role == "qa" else "reviewed"
        signature = sign_record(self.trail, self.guard, who, record.record_id, meaning,
                                reason=f"review decision on {unit_id}", own_action=DECIDE)
        first = found.stations[0]
        self.client.insert_json_rows(f"{self.db}.review_decisions", [{
            "site": self.site, "unit_id": unit_id, "lot": lot, "line": found.line, "product": found.product,
            "station": ",".join(s.station for s in found.stations if s.verdict != "pass" and s.station),
            "decision": decision, "defect": defect if decision == DEFECT else "", "user": who.username,
            "role": who.role, "decided_time": record.time, "seconds_spent": max(0.0, float(seconds_spent)),
            "machine_defect": next((s.defect for s in found.stations if s.verdict != "pass"), first.defect),
            "score": max((s.score for s in found.stations if s.score is not None), default=None),
            "model_version": first.model, "camera": next((s.camera for s in found.stations if s.verdict != "pass"),
                                                         first.camera),
            "capture_time": first.capture_time, "audit_record": record.record_id, "signature": signature.record_id,
        }])
        return Recorded(record, signature)

    def record_sample(self, who: Principal, password: str, lot: str, defective: int, spec: ReviewSpec | None = None,
                      comment: str = "") -> tuple[Recorded, ReviewSummary]:
        """Record the result of inspecting the ISO 2859-1 sample of the lot's recovered units (QA);
        `spec`: the [review] rules (default: the lot's recipe's)."""
        self._signer(who, password, SAMPLE, lot)
        spec = spec or self.lot_rules(lot)
        summary = summarize(self.client, self.db, lot, spec)
        plan = summary.plan
        if plan is None:
            raise self._refuse(who, SAMPLE, lot, f"lot {lot!r} has no recovered units to sample")
        if summary.undecided:
            raise self._refuse(who, SAMPLE, lot, f"lot {lot!r} still has {summary.undecided} undecided review "
                                                 "unit(s): sample once every unit is decided")
        if not 0 <= defective <= plan.sample_size:
            raise self._refuse(who, SAMPLE, lot, f"{defective} defective units in a sample of {plan.sample_size}")
        try:
            accepted = plan.judge(defective)
        except SamplePlanError as exc:
            raise self._refuse(who, SAMPLE, lot, str(exc)) from None
        record = self.trail.record(AuditEvent(
            SAMPLE, subject=lot, user=who.username, role=who.role, new_value="accepted" if accepted else "rejected",
            reason=comment, detail={"plan": plan.describe(), "recovered": plan.lot_size,
                                    "sample_size": plan.sample_size, "accept": plan.accept, "defective": defective},
        ))
        signature = sign_record(self.trail, self.guard, who, record.record_id, "approved",
                                reason=f"sample of the recovered units of lot {lot}")
        self.client.insert_json_rows(f"{self.db}.review_samples", [{
            "lot": lot, "recovered": plan.lot_size, "level": plan.level, "aql": plan.aql,
            "code_letter": plan.code_letter, "sample_size": plan.sample_size, "accept": plan.accept,
            "defective": defective, "accepted": accepted, "user": who.username, "decided_time": record.time,
            "audit_record": record.record_id, "signature": signature.record_id,
        }])
        return Recorded(record, signature), summarize(self.client, self.db, lot, spec)


def _detail(unit: QueueUnit, lot: str, seconds_spent: float, before: str) -> dict[str, object]:
    return {
        "lot": lot, "line": unit.line, "product": unit.product, "recipe": unit.recipe, "status_before": before,
        "seconds_spent": round(max(0.0, float(seconds_spent)), 1),
        "stations": [{"station": s.station, "verdict": s.verdict, "defect": s.defect, "score": s.score,
                      "model": s.model} for s in unit.stations],
    }
