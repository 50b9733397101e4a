"""`linesight models compare P`: a shadowed candidate version against the live verdicts.

Joins ``shadow_inspections`` (the candidate, `streams.shadow`) with ``inspections`` (the live
verdicts, model causes only: a fail-safe reject is no model's judgement) on line, unit and
station, production units only, and ``ground_truth`` where the simulator or a dataset replay
recorded it. The gate removes a unit on ``review`` or ``reject``, so "would pass" and "would
remove" are the two sides that matter on the line; the 3x3 table keeps review apart.
Review decisions (a person's verdict on a unit the gate sent to review, ``review_decisions``,
the latest per unit) count where that table exists and holds the unit: a person's "good" or
"defect" is then the best truth there is for that unit; without the table the comparison says
that none are recorded instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pipeline.clickhouse import ClickHouseClient
from pipeline.wire.messages import VERDICT_ORDER

VERDICTS = VERDICT_ORDER
REVIEW_TABLE = "review_decisions"


@dataclass
class TruthFigures:
    """Against ground truth: detection = defective units removed, false rejects = good units removed."""

    defective: int = 0
    good: int = 0
    live_detected: int = 0
    candidate_detected: int = 0
    live_false_rejects: int = 0
    candidate_false_rejects: int = 0

    @staticmethod
    def rate(n: int, of: int) -> float | None:
        return n / of if of else None


@dataclass
class ReviewFigures:
    """Units a person decided after the live gate sent them to review, and the candidate's call."""

    table_present: bool = False
    good: int = 0
    defect: int = 0
    cannot_decide: int = 0
    candidate_passed_good: int = 0  # the candidate would have passed a unit a person found good
    candidate_removed_defect: int = 0  # ... and removed a unit a person found defective


@dataclass
class Comparison:
    product: str
    classifier: str
    candidate_version: int | None
    live_versions: dict[str, int]  # live version -> units it judged among those compared
    units: int  # scored by both
    agreed: int
    table: dict[str, dict[str, int]]  # live verdict -> candidate verdict -> units
    candidate_pass_live_removed: list[str]
    candidate_removed_live_pass: list[str]
    candidate_pass_live_removed_n: int
    candidate_removed_live_pass_n: int
    candidate_failed: int  # frames the candidate could not score (not compared)
    truth: TruthFigures = field(default_factory=TruthFigures)
    reviews: ReviewFigures = field(default_factory=ReviewFigures)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.units if self.units else None

    def to_json(self) -> str:
        doc: dict[str, Any] = asdict(self)
        doc["agreement"] = self.agreement
        t = self.truth
        doc["truth"] |= {
            "live_detection": t.rate(t.live_detected, t.defective),
            "candidate_detection": t.rate(t.candidate_detected, t.defective),
            "live_false_reject_rate": t.rate(t.live_false_rejects, t.good),
            "candidate_false_reject_rate": t.rate(t.candidate_false_rejects, t.good),
        }
        return json.dumps(doc, indent=2)

    def to_text(self) -> str:
        pct = lambda x: "-" if x is None else f"{100 * x:.2f} %"  # noqa: E731
        if self.candidate_version is None:
            return (f"no shadow verdicts recorded for {self.classifier} ({self.product}): "
                    f"start one with `linesight models shadow {self.product} --version V --reason ...`")
        live = ", ".join(f"{v} ({n})" for v, n in sorted(self.live_versions.items())) or "-"
        out = [
            f"shadow of {self.classifier} ({self.product}) version {self.candidate_version} against the live version(s) {live}",
            f"units scored by both           {self.units}",
            f"agreement                      {pct(self.agreement)} ({self.agreed} of {self.units})",
            f"candidate could not score      {self.candidate_failed}",
            "",
            "live \\ candidate   " + "".join(f"{v:>9}" for v in VERDICTS),
        ]
        for lv in VERDICTS:
            out.append(f"{lv:<18} " + "".join(f"{self.table[lv][cv]:>9}" for cv in VERDICTS))
        out.append("")
        for label, n, ids in (
            ("candidate would pass, live removed (review/reject)", self.candidate_pass_live_removed_n,
             self.candidate_pass_live_removed),
            ("candidate would remove, live passed", self.candidate_removed_live_pass_n, self.candidate_removed_live_pass),
        ):
            more = f" (first {len(ids)})" if n > len(ids) else ""
            out.append(f"{label}: {n}" + (f"{more}: {', '.join(ids)}" if ids else ""))
        t = self.truth
        out.append("")
        if t.defective + t.good:
            out.append(f"against ground truth ({t.defective} defective, {t.good} good units known):")
            out.append(f"  detection     live {pct(t.rate(t.live_detected, t.defective))}  "
                       f"candidate {pct(t.rate(t.candidate_detected, t.defective))}")
            out.append(f"  false rejects live {pct(t.rate(t.live_false_rejects, t.good))}  "
                       f"candidate {pct(t.rate(t.candidate_false_rejects, t.good))}")
        else:
            out.append("against ground truth: none recorded for these units")
        r = self.reviews
        if not r.table_present:
            out.append("review decisions: none recorded (no review_decisions table)")
        elif not r.good + r.defect + r.cannot_decide:
            out.append("review decisions: none recorded for these units")
        else:
            out.append(f"review decisions by a person: {r.good} good, {r.defect} defect, {r.cannot_decide} "
                       f"cannot decide; the candidate would pass {r.candidate_passed_good} of the good and "
                       f"remove {r.candidate_removed_defect} of the defective")
        return "\n".join(out)


def _has_table(client: ClickHouseClient, db: str, table: str) -> bool:
    return bool(client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}", {"db": db, "t": table}
    ).scalar())


def compare(
    client: ClickHouseClient, db: str, product: str, classifier: str, version: int | None = None,
    since: datetime | None = None, line: str | None = None, limit_ids: int = 20,
) -> Comparison:
    """The comparison of `version` (default: the newest version shadowed) with the live verdicts."""
    params: dict[str, Any] = {"product": product, "model": classifier}
    if version is None:
        found = client.query(
            f"SELECT max(model_version), count() FROM {db}.shadow_inspections "
            "WHERE product = {product:String} AND model_name = {model:String}", params,
        ).rows[0]
        version = int(found[0]) if found[1] else None
    params["version"] = version or 0
    cond = ["s.product = {product:String}", "s.model_name = {model:String}", "s.model_version = {version:UInt32}"]
    if since is not None:
        cond.append("s.capture_time >= {since:DateTime64(6)}")
        params["since"] = since
    if line:
        cond.append("s.line = {line:String}")
        params["line"] = line
    where = " AND ".join(cond)
    failed = int(client.query(
        f"SELECT count() FROM {db}.shadow_inspections AS s FINAL WHERE {where} AND s.verdict = 'failed'", params
    ).scalar() or 0)
    reviewed = _has_table(client, db, REVIEW_TABLE)
    review_join = (
        f"""LEFT JOIN (SELECT line, unit_id, argMax(decision, decided_time) AS decision
                       FROM {db}.{REVIEW_TABLE} FINAL GROUP BY line, unit_id) AS d
                ON d.line = s.line AND d.unit_id = s.unit_id""" if reviewed else ""
    )
    rows = client.query(
        f"""SELECT s.unit_id, s.station, l.verdict, s.verdict, l.model_version, t.label,
                   {"d.decision" if reviewed else "''"}
            FROM (SELECT * FROM {db}.shadow_inspections AS s FINAL WHERE {where} AND s.verdict != 'failed') AS s
            INNER JOIN (SELECT line, unit_id, station, verdict, model_version FROM {db}.inspections FINAL
                        WHERE product = {{product:String}} AND cause = 'model' AND purpose = '') AS l
                ON l.line = s.line AND l.unit_id = s.unit_id AND l.station = s.station
            LEFT JOIN (SELECT line, unit_id, label FROM {db}.ground_truth FINAL WHERE purpose = '') AS t
                ON t.line = s.line AND t.unit_id = s.unit_id
            {review_join}
            ORDER BY s.capture_time, s.unit_id, s.station""",
        params,
    ).rows
    table = {lv: dict.fromkeys(VERDICTS, 0) for lv in VERDICTS}
    live_versions: dict[str, int] = {}
    cand_pass_live_removed: list[str] = []
    cand_removed_live_pass: list[str] = []
    truth = TruthFigures()
    reviews = ReviewFigures(table_present=reviewed)
    agreed = 0
    for unit, station, live, cand, live_version, label, decision in rows:
        name = f"{unit}@{station}" if station else str(unit)
        table[str(live)][str(cand)] += 1
        live_versions[str(live_version)] = live_versions.get(str(live_version), 0) + 1
        agreed += live == cand
        live_removed, cand_removed = live != "pass", cand != "pass"
        if live_removed and not cand_removed:
            cand_pass_live_removed.append(name)
        elif cand_removed and not live_removed:
            cand_removed_live_pass.append(name)
        if label == "defect":
            truth.defective += 1
            truth.live_detected += live_removed
            truth.candidate_detected += cand_removed
        elif label == "good":
            truth.good += 1
            truth.live_false_rejects += live_removed
            truth.candidate_false_rejects += cand_removed
        if decision == "good":
            reviews.good += 1
            reviews.candidate_passed_good += not cand_removed
        elif decision == "defect":
            reviews.defect += 1
            reviews.candidate_removed_defect += cand_removed
        elif decision:
            reviews.cannot_decide += 1
    return Comparison(
        product=product, classifier=classifier, candidate_version=version, live_versions=live_versions,
        units=len(rows), agreed=agreed, table=table,
        candidate_pass_live_removed=cand_pass_live_removed[:limit_ids],
        candidate_removed_live_pass=cand_removed_live_pass[:limit_ids],
        candidate_pass_live_removed_n=len(cand_pass_live_removed),
        candidate_removed_live_pass_n=len(cand_removed_live_pass),
        candidate_failed=failed, truth=truth, reviews=reviews,
    )
