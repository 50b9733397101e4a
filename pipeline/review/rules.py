"""Re-inspection control: which review decisions may be recorded, and what a unit's decisions
amount to.

Manual re-inspection of machine-removed units can turn into testing into compliance, so the
rules are strict and live in one place that the dashboard, the CLI and the batch record share:
a machine `reject` is never decided (it stays rejected); only a `review` unit of the lot in hand
is; a unit becomes good only by a recorded `good` decision (confirmed by QA when the recipe says
so); "cannot decide" keeps it rejected; a decided unit is not decided again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GOOD, DEFECT, CANNOT_DECIDE = "good", "defect", "cannot_decide"
DECISIONS = (GOOD, DEFECT, CANNOT_DECIDE)
DECIDERS = ("operator", "qa")  # roles that may record a decision; only qa confirms

# What a unit's decisions amount to.
UNDECIDED = "undecided"
AWAITING_QA = "awaiting_qa"  # decided good by an operator; the recipe wants QA to confirm
RECOVERED = "recovered"  # good: may be returned to the lot (and is sampled, pipeline.core.aql)
CONFIRMED_DEFECTIVE = "confirmed_defective"
KEPT_REJECTED = "kept_rejected"  # nobody could decide: stays rejected
FINAL = (RECOVERED, CONFIRMED_DEFECTIVE, KEPT_REJECTED)


@dataclass(frozen=True)
class Decision:
    """One recorded decision on a review unit."""

    decision: str
    defect: str  # the defect class for `defect`, '' otherwise
    user: str
    role: str


@dataclass(frozen=True)
class ReviewUnit:
    """A unit as the machine left it, with the decisions already recorded on it (oldest first)."""

    unit_id: str
    lot: str
    verdict: str  # the unit's final machine verdict: pass, review or reject
    purpose: str = ""  # 'challenge': a challenge unit, never production
    decisions: tuple[Decision, ...] = ()


def status(unit: ReviewUnit, qa_confirms: bool) -> str:
    """What the unit's decisions amount to (UNDECIDED ... KEPT_REJECTED)."""
    if not unit.decisions:
        return UNDECIDED
    last = unit.decisions[-1]
    if last.decision == DEFECT:
        return CONFIRMED_DEFECTIVE
    if last.decision == CANNOT_DECIDE:
        return KEPT_REJECTED
    if qa_confirms and last.role != "qa":
        return AWAITING_QA
    return RECOVERED


def refusal(
    unit: ReviewUnit | None, unit_id: str, lot: str, decision: str, defect: str, role: str,
    classes: Sequence[str], qa_confirms: bool,
) -> str | None:
    """Why this decision may not be recorded (None when it may). Every refusal is audited by the caller."""
    if unit is None:
        return f"unit {unit_id!r} has no stored verdict"
    if unit.lot != lot:
        return f"unit {unit_id!r} belongs to lot {unit.lot!r}, not lot {lot!r}"
    if unit.purpose:
        return f"unit {unit_id!r} is a {unit.purpose} unit, not production: it is not reviewed"
    if unit.verdict == "reject":
        return f"unit {unit_id!r} is a machine reject: it stays rejected (only review units are decided)"
    if unit.verdict != "review":
        return f"unit {unit_id!r} was passed by the machine: there is nothing to decide"
    if role not in DECIDERS:
        return f"role {role!r} may not decide review units (operator or qa)"
    if decision not in DECISIONS:
        return f"decision {decision!r} is not one of {', '.join(DECISIONS)}"
    if decision == DEFECT and defect not in classes:
        return f"a defect decision names its class: {defect!r} is not one of {', '.join(classes) or 'none'}"
    if decision != DEFECT and defect:
        return f"only a defect decision names a defect class (got {defect!r} with {decision!r})"
    state = status(unit, qa_confirms)
    if state in FINAL:
        last = unit.decisions[-1]
        return f"unit {unit_id!r} is already decided ({state} by {last.user}, {last.role})"
    if state == AWAITING_QA and role != "qa":
        return f"unit {unit_id!r} was decided good by {unit.decisions[-1].user}: QA confirms it"
    return None
