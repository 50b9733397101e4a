"""Roles and the permission table: least privilege, separation of duties (docs/audit.md).

operator runs the line (and switches it to an approved recipe at changeover); qa releases models, changes recipes and thresholds and signs records;
admin manages users (and cannot release a model: user administration and quality release are
separate duties). Everyone may read and verify the audit trail.
"""

from __future__ import annotations

ROLES = ("operator", "qa", "admin")

PERMISSIONS: dict[str, frozenset[str]] = {
    "operator": frozenset({
        "audit.verify", "line.start", "line.stop", "alarm.acknowledge", "unit.override", "recipe.activate",
        # Decide review units at the review station, signing one's own decision (docs/review.md).
        "review.decide",
    }),
    "qa": frozenset({
        "audit.verify", "audit.export", "audit.sign", "model.deploy", "model.rollback",
        "threshold.change", "recipe.change", "recipe.activate", "alarm.acknowledge", "unit.override",
        # Challenge runs are e-signed by whoever runs them (audit.sign): QA (docs/validation.md).
        "challenge.register", "challenge.run",
        # Decide or confirm review units; record the sample of a lot's recovered units (docs/review.md).
        "review.decide", "review.sample",
        # The validation report of a model version: test sets, criteria, report, approval (docs/validation.md).
        "validation.testset.register", "validation.criteria", "validation.report", "validation.approve",
    }),
    "admin": frozenset({
        "audit.verify", "audit.export", "user.add", "user.disable", "user.passwd",
    }),
}

# Actions recorded with `linesight audit log` and the permission each needs.
LOGGABLE_ACTIONS = {
    "line.start": "line.start",
    "line.stop": "line.stop",
    "alarm.acknowledge": "alarm.acknowledge",
    "unit.override": "unit.override",
    "threshold.change": "threshold.change",
    "recipe.change": "recipe.change",
}

# Records whose release needs an electronic signature (`linesight audit sign`).
SIGNABLE_ACTIONS = ("model.deploy", "model.rollback", "threshold.change", "recipe.change")


def allowed(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def roles_with(permission: str) -> list[str]:
    return [r for r in ROLES if permission in PERMISSIONS[r]]
