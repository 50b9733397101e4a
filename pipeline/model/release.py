"""Release gating and model release/rollback as attributable, signed GMP actions (docs/audit.md).

**Release gate.** Training judges every version it writes against acceptance criteria
(`AcceptanceCriteria`: the product's recipe's `[acceptance]`, else `DEFAULT_ACCEPTANCE` for the
mode; docs/models.md, "Release gate"): each criterion with the validation figure measured, the
limit and passed/failed goes into the model card (`release_gate`, and `deployable`). A version
that misses any criterion is still written (immutable, like every version) but is not
deployable: it never becomes live on its own, and `linesight models deploy` refuses it unless a
QA user overrides the gate with a reason and an electronic signature (audited with the failed
criteria).

**Deploy/rollback.** The caller authenticated the user (password re-entered); here the role's
permission is checked, a reason is required, the deploy or rollback runs
(`pipeline.model.deploy`), and the outcome is recorded: ``model.deploy``/``model.rollback`` (old
and new version; a gate override with the criteria the version failed) with an electronic
signature bound to that record, or ``model.deploy.failed``/``model.rollback.failed`` with the
error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.audit.record import AuditRecord
    from pipeline.audit.trail import AuditTrail
    from pipeline.auth.guard import Guard, Principal
    from pipeline.settings import Settings

# `linesight train` (and `python -m pipeline.model.train`) exit status when a version was
# released but missed its acceptance criteria (0: a deployable version was released; 1: an
# error, nothing released).
EXIT_NOT_DEPLOYABLE = 3

# ----------------------------------------------------------------------------- release gate


@dataclass(frozen=True)
class AcceptanceCriteria:
    """What a version's validation must show to be deployable (rates as fractions; None: not judged)."""

    min_detection: float | None = None  # detection rate of the gate (review + reject) on defective units
    max_false_reject: float | None = None  # good units the gate removes (review + reject)
    max_review: float | None = None  # share of all validation units sent to a person (review verdict)
    min_auroc: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not (isinstance(value, int | float) and 0.0 <= float(value) <= 1.0):
                raise ValueError(f"acceptance criterion {name} must be a fraction in [0, 1], got {value!r}")
        if all(v is None for v in asdict(self).values()):
            raise ValueError("acceptance criteria name no criterion: a release gate must judge something")

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


# The issue-14 targets: supervised detection >= 99 % at false rejects <= 1 %, good-only >= 95 %
# at <= 2 %; at most 5 % of validation units sent to a person (a version whose reject threshold
# sits above most defects hands them to people instead of rejecting them: review 30 % seen).
DEFAULT_ACCEPTANCE: dict[str, AcceptanceCriteria] = {
    "supervised": AcceptanceCriteria(min_detection=0.99, max_false_reject=0.01, max_review=0.05),
    "good-only": AcceptanceCriteria(min_detection=0.95, max_false_reject=0.02, max_review=0.05),
}

# criterion -> (validation metric of the card, comparison, what it is called in messages, percent?)
CRITERIA: dict[str, tuple[str, str, str, bool]] = {
    "min_detection": ("detection_rate", ">=", "detection", True),
    "max_false_reject": ("false_reject_rate", "<=", "false-reject rate", True),
    "max_review": ("review_rate", "<=", "review rate", True),
    "min_auroc": ("auroc", ">=", "AUROC", False),
}


def default_acceptance(mode: str) -> AcceptanceCriteria:
    try:
        return DEFAULT_ACCEPTANCE[mode]
    except KeyError:
        raise ValueError(f"no default acceptance criteria for mode {mode!r}") from None


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "not measured"
    return f"{100 * value:.2f} %" if percent else f"{value:.4f}"


@dataclass(frozen=True)
class CriterionCheck:
    criterion: str
    metric: str
    comparison: str
    limit: float
    measured: float | None  # None: the validation could not measure it (a failure)
    passed: bool

    def text(self) -> str:
        _, _, label, percent = CRITERIA[self.criterion]
        verdict = "pass" if self.passed else "FAIL"
        return (f"{label} {_fmt(self.measured, percent)} (limit {self.comparison} {_fmt(self.limit, percent)}, "
                f"{self.criterion}): {verdict}")


@dataclass(frozen=True)
class GateResult:
    """A version judged against its acceptance criteria."""

    criteria_source: str
    checks: tuple[CriterionCheck, ...]
    on: str = "the validation set, at this version's own thresholds"
    failed: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "failed", tuple(c.text() for c in self.checks if not c.passed))

    @property
    def deployable(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "deployable": self.deployable,
            "criteria_source": self.criteria_source,
            "on": self.on,
            "criteria": [asdict(c) for c in self.checks],
            "failed": list(self.failed),
        }

    def lines(self) -> list[str]:
        head = ("release gate: passed, deployable" if self.deployable else
                f"release gate: FAILED ({len(self.failed)} of {len(self.checks)} criteria), NOT deployable")
        return [f"{head}; criteria: {self.criteria_source}; on {self.on}"] + [f"  {c.text()}" for c in self.checks]


def judge(metrics: dict[str, Any], criteria: AcceptanceCriteria, source: str,
          on: str = "the validation set, at this version's own thresholds") -> GateResult:
    """Judge validation metrics (`pipeline.model.train.validation_metrics`) against `criteria`.

    A figure the validation could not measure (missing, NaN: no defective validation units for
    a detection rate) fails its criterion: the gate never passes silently.
    """
    checks: list[CriterionCheck] = []
    for name, limit in criteria.as_dict().items():
        metric, comparison, _, _ = CRITERIA[name]
        raw = metrics.get(metric)
        measured = float(raw) if isinstance(raw, int | float) and not math.isnan(float(raw)) else None
        passed = measured is not None and (measured >= limit if comparison == ">=" else measured <= limit)
        checks.append(CriterionCheck(name, metric, comparison, limit, measured, passed))
    return GateResult(source, tuple(checks), on)


# ----------------------------------------------------------------------------- deploy / rollback


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
    override_gate: bool = False,
) -> tuple[object, AuditRecord, AuditRecord]:
    """Deploy ``version`` of ``target`` (or roll back); returns (DeployResult, record, signature).

    ``override_gate``: deploy a version that failed its release gate; needs the signature
    meaning ``approved`` and a reason, and the record names the failed criteria.
    """
    from pipeline.audit.record import AuditEvent
    from pipeline.auth.signatures import MEANINGS, sign_record
    from pipeline.model.deploy import DeployError, deploy, rollback

    permission = f"model.{action}"
    guard.authorize(who, permission, target)
    if not reason.strip():
        raise guard.refuse(who.username, who.role, permission, target, f"a reason is required to {action} a model")
    if meaning not in MEANINGS:
        raise guard.refuse(who.username, who.role, permission, target,
                           f"unknown signature meaning {meaning!r}: one of {', '.join(MEANINGS)}")
    if override_gate and (action != "deploy" or meaning != "approved"):
        raise guard.refuse(who.username, who.role, permission, target,
                           "a release-gate override is a deploy signed with the meaning 'approved'")
    try:
        if action == "deploy":
            if version is None:
                raise DeployError("a version is required")
            _validated_in_trail(settings, trail, target, version)
            result = deploy(settings, target, version, reason, user=who.username, override_gate=override_gate)
        else:
            result = rollback(settings, target, reason, user=who.username)
    except DeployError as exc:
        trail.record(AuditEvent(
            f"{permission}.failed", subject=target, user=who.username, role=who.role,
            new_value="" if version is None else str(version), reason=reason, detail={"error": str(exc)},
        ))
        raise
    detail: dict[str, Any] = {"product": result.product, "model": result.classifier, "triton": result.triton}
    overridden = result.entry.get("gate_override")
    if overridden:
        detail["gate_override"] = {"failed_criteria": list(overridden)}
    record = trail.record(AuditEvent(
        permission, subject=result.classifier, user=who.username, role=who.role,
        old_value="" if result.from_version is None else str(result.from_version), new_value=str(result.to_version),
        reason=reason, detail=detail,
    ))
    signature = sign_record(trail, guard, who, record.record_id, meaning, reason)
    return result, record, signature


def _validated_in_trail(settings: Settings, trail: AuditTrail, target: str, version: int) -> None:
    """The version's report approval must be the trail's signed record, not only a file (DeployError)."""
    from pathlib import Path

    from pipeline.model import repository
    from pipeline.model.approval import trail_problems
    from pipeline.model.deploy import DeployError, resolve_classifier

    _, classifier = resolve_classifier(settings, target)
    vdir = repository.version_dir(Path(settings.triton.model_repository), classifier, version)
    problems = trail_problems(trail, vdir, f"{classifier}@v{version}")
    if problems:
        raise DeployError(f"refusing to deploy {classifier} version {version}: " + "; ".join(problems))
