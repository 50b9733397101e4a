"""A lot's challenge runs as the batch record and the release check read them (docs/validation.md).

The runs themselves (`pipeline.validation.challenge`) write ``challenge_runs``; here only what a
lot's record needs: the latest start and end run, and why they refuse the lot's release.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.clickhouse import ClickHouseClient
from pipeline.recipes.schema import CHALLENGE_PHASES as PHASES


@dataclass(frozen=True)
class LotChallenge:
    """The latest challenge run of one phase of a lot (None fields: no run)."""

    phase: str
    run: dict[str, Any] | None

    @property
    def passed(self) -> bool:
        return bool(self.run and self.run["passed"])

    @property
    def problem(self) -> str:
        """Why this phase blocks the lot's release ('' when it does not)."""
        if self.run is None:
            return f"{self.phase} challenge missing"
        if not self.run["passed"]:
            return f"{self.phase} challenge failed (run {self.run['run_id']}: " + "; ".join(self.run["failures"][:3]) + ")"
        return ""


def lot_challenges(client: ClickHouseClient, db: str, lot: str) -> list[LotChallenge]:
    """The lot's start and end challenge: the latest run of each phase (a failed run may be
    repeated; the record keeps every run in the audit trail and ``challenge_runs``)."""
    rows = client.query(
        f"""SELECT run_id, line, phase, recipe, set_id, set_sha256, units, defects, defects_rejected, good,
                   good_removed, good_review, passed, failures, user, finished_time, audit_record, signature
            FROM {db}.challenge_runs FINAL WHERE lot = {{lot:String}} ORDER BY finished_time""",
        {"lot": lot},
    ).named()
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:
        latest[str(r["phase"])] = r
    return [LotChallenge(p, latest.get(p)) for p in PHASES]


def release_refusals(challenges: Sequence[LotChallenge]) -> list[str]:
    """Every reason the lot's challenges refuse its release (empty: they do not)."""
    return [c.problem for c in challenges if c.problem]
