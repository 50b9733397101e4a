"""The run report: what was published, decided, rejected and fired for one lot, scored against
ground truth, straight from ClickHouse (so an analyst can reproduce every figure in SQL).

Verdicts are counted apart: `passed` (inspected and shipped), `rejected` (by the model or fail
safe), `review` (in a model's grey zone: removed by the gate, a person decides). A defect
"escapes" only when it passed; a good unit removed (reject or review) is a false reject.

The report carries the lot's reject-gate reconciliation (`pipeline.analytics.reconciliation`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from pipeline.analytics.reconciliation import BatchReconciliation, build_reconciliation
from pipeline.clickhouse import ClickHouseClient


@dataclass(frozen=True)
class RunReport:
    lot: str
    published: int
    inspected: int
    passed: int
    rejected: int  # verdict reject: by the model or fail-safe
    rejected_by_model: int
    failsafe_rejected: int
    review: int  # grey zone: removed by the gate for a person to decide
    dead_lettered: int
    escaped_defects: int
    false_rejects: int  # good units removed (reject or review)
    good_in_review: int  # of those, the ones a reviewer can recover
    defects_published: int
    throughput_units_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    units_without_verdict: int
    verdicts_without_unit: int
    units_with_several_verdicts: int
    rejected_not_fired: int
    fired_not_rejected: int  # fired on a "model" cause although the verdict was pass (a bug)
    model_versions: list[str]
    gate: BatchReconciliation | None = None  # what the reject gate did (gate_events)
    # Recipes that judged the lot, measured numbers' spread, repeated label serials (docs/recipes.md).
    recipes: list[tuple[str, int]] = field(default_factory=list)
    measurements: list[dict] = field(default_factory=list)
    duplicate_serials: list[dict] = field(default_factory=list)

    @property
    def every_unit_has_one_verdict(self) -> bool:
        return (
            self.published > 0
            and self.units_without_verdict == 0
            and self.verdicts_without_unit == 0
            and self.units_with_several_verdicts == 0
        )

    @property
    def every_reject_fired(self) -> bool:
        return self.rejected_not_fired == 0 and self.fired_not_rejected == 0

    def to_json(self) -> str:
        doc = {k: v for k, v in asdict(self).items() if k != "gate"} | {
            "every_unit_has_one_verdict": self.every_unit_has_one_verdict,
            "every_reject_fired": self.every_reject_fired,
            "gate": self.gate.as_dict() if self.gate is not None else None,
        }
        return json.dumps(doc, indent=2)

    def to_text(self) -> str:
        ok = lambda flag: "OK" if flag else "FAILED"  # noqa: E731
        detected = self.defects_published - self.escaped_defects
        rate = f"{100 * detected / self.defects_published:.1f} %" if self.defects_published else "n/a"
        goods = self.published - self.defects_published
        frr = f"{100 * self.false_rejects / goods:.2f} %" if goods else "n/a"
        lines = [
            f"LineSight run report — lot {self.lot}",
            f"  units published          {self.published:>8}",
            f"  units inspected          {self.inspected:>8}",
            f"  passed                   {self.passed:>8}",
            f"  rejected                 {self.rejected:>8}  (model {self.rejected_by_model}, fail-safe {self.failsafe_rejected})",
            f"  review                   {self.review:>8}  (removed by the gate for a person; {self.good_in_review} of them good)",
            f"  dead-lettered frames     {self.dead_lettered:>8}",
            f"  escaped defects          {self.escaped_defects:>8}  (detection rate {rate})",
            f"  false rejects            {self.false_rejects:>8}  (false-reject rate {frr})",
            f"  throughput               {self.throughput_units_per_s:>8.1f} units/s",
            f"  latency capture->verdict p50 {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms, max {self.latency_max_ms:.1f} ms",
            f"  model versions           {', '.join(self.model_versions) or '-'}",
            f"  every published unit has exactly one verdict: {ok(self.every_unit_has_one_verdict)}"
            f" (missing {self.units_without_verdict}, unknown {self.verdicts_without_unit}, several {self.units_with_several_verdicts})",
            f"  every rejected unit was fired at the gate:     {ok(self.every_reject_fired)}"
            f" (not fired {self.rejected_not_fired}, fired but passed {self.fired_not_rejected})",
        ]
        if self.recipes:
            lines.append(f"  recipes                  {', '.join(f'{r} ({n} units)' for r, n in self.recipes)}")
            for m in self.measurements:
                lines.append(f"    {m['name']:<24} mean {m['mean']:.3f}  min {m['min']:.3f}  p05 {m['p05']:.3f}  "
                             f"p95 {m['p95']:.3f}  max {m['max']:.3f}  ({m['n']} units)")
            lines.append(f"  serials seen twice       {len(self.duplicate_serials):>8}"
                         + (f"  ({', '.join(d['serial'] for d in self.duplicate_serials[:5])}"
                            f"{', ...' if len(self.duplicate_serials) > 5 else ''})" if self.duplicate_serials else ""))
        if self.gate is not None:
            lines.append(self.gate.to_text())
        return "\n".join(lines)


def unit_verdicts_subquery(client: ClickHouseClient, db: str, lot: str) -> str:
    """(unit_id, verdict, cause, inspected) per unit of lot ``{lot:String}``: a one-camera unit's
    result, or a multi-station unit's own verdict (``unit_verdicts``: inspected when every
    station judged it in time; a unit missing a station or decided late counts as fail-safe)."""
    multi = client.query(f"SELECT count() FROM {db}.unit_verdicts FINAL WHERE lot = {{lot:String}} AND unit_id NOT IN (SELECT unit_id FROM {db}.inspections WHERE lot = {{lot:String}} AND purpose != '')", {"lot": lot})
    if not int(multi.rows[0][0]):
        return f"(SELECT unit_id, verdict, cause, inspected FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND purpose = '')"
    return f"""(SELECT unit_id, verdict, if(cause = 'model', 'model', 'failsafe') AS cause,
                       cause = 'model' AND empty(missing) AS inspected
                FROM {db}.unit_verdicts FINAL WHERE lot = {{lot:String}} AND unit_id NOT IN (SELECT unit_id FROM {db}.inspections WHERE lot = {{lot:String}} AND purpose != ''))"""


def build_report(client: ClickHouseClient, database: str, lot: str, *, positive_release: bool = False) -> RunReport:
    db, q = database, "{lot:String}"  # bound server-side, never spliced into the SQL
    truth = f"(SELECT unit_id, label, defect FROM {db}.ground_truth FINAL WHERE lot = {q} AND purpose = '')"
    verdicts = unit_verdicts_subquery(client, db, lot)
    fired = f"(SELECT unit_id FROM {db}.actuations FINAL WHERE lot = {q} AND purpose = '')"
    fired_on_model = f"(SELECT unit_id FROM {db}.actuations FINAL WHERE lot = {q} AND purpose = '' AND cause = 'model')"

    def one(sql: str) -> dict:
        return client.query(sql, {"lot": lot}).named()[0]

    t = one(
        f"SELECT count() AS published, countIf(label = 'defect') AS defects FROM {truth}"
    )
    v = one(
        f"""SELECT count() AS decided,
                   countIf(inspected) AS inspected,
                   countIf(verdict = 'pass') AS passed,
                   countIf(verdict = 'reject') AS rejected,
                   countIf(verdict = 'reject' AND cause = 'model') AS by_model,
                   countIf(cause = 'failsafe') AS failsafe,
                   countIf(verdict = 'review') AS review
            FROM {verdicts}"""
    )
    timing = one(
        f"""SELECT count() AS n,
                   quantileExact(0.5)(latency_ms) AS p50,
                   quantileExact(0.99)(latency_ms) AS p99,
                   max(latency_ms) AS max_ms,
                   dateDiff('microsecond', min(capture_time), max(inferred_time)) / 1e6 AS span_s,
                   groupUniqArray(concat(model_name, ':', model_version)) AS versions
            FROM {db}.inspections FINAL WHERE lot = {q} AND purpose = '' AND inspected"""
    )
    scored = one(
        f"""SELECT countIf(t.label = 'defect' AND v.verdict = 'pass') AS escaped,
                   countIf(t.label = 'good' AND v.verdict != 'pass') AS false_rejects,
                   countIf(t.label = 'good' AND v.verdict = 'review') AS good_in_review
            FROM {truth} AS t INNER JOIN {verdicts} AS v USING unit_id"""
    )
    missing = one(f"SELECT count() AS n FROM {truth} WHERE unit_id NOT IN (SELECT unit_id FROM {verdicts})")
    unknown = one(f"SELECT count() AS n FROM {verdicts} WHERE unit_id NOT IN (SELECT unit_id FROM {truth})")
    several = one(
        f"""SELECT count() AS n FROM (
                SELECT unit_id FROM {db}.inspections WHERE lot = {q} AND purpose = ''
                GROUP BY unit_id, station HAVING uniqExact(verdict, cause) > 1)"""
    )
    not_fired = one(
        f"SELECT count() AS n FROM {verdicts} WHERE verdict != 'pass' AND unit_id NOT IN {fired}"
    )
    fired_passed = one(
        f"SELECT count() AS n FROM {fired_on_model} WHERE unit_id NOT IN (SELECT unit_id FROM {verdicts} WHERE verdict != 'pass')"
    )
    dead = one(f"SELECT count() AS n FROM {db}.dead_letters FINAL WHERE lot = {q}")
    span = float(timing["span_s"] or 0.0)
    return RunReport(
        lot=lot,
        published=int(t["published"]),
        inspected=int(v["inspected"]),
        passed=int(v["passed"]),
        rejected=int(v["rejected"]),
        rejected_by_model=int(v["by_model"]),
        failsafe_rejected=int(v["failsafe"]),
        review=int(v["review"]),
        dead_lettered=int(dead["n"]),
        escaped_defects=int(scored["escaped"]),
        false_rejects=int(scored["false_rejects"]),
        good_in_review=int(scored["good_in_review"]),
        defects_published=int(t["defects"]),
        throughput_units_per_s=(int(v["decided"]) / span) if span > 0 else 0.0,
        latency_p50_ms=float(timing["p50"] or 0.0),
        latency_p99_ms=float(timing["p99"] or 0.0),
        latency_max_ms=float(timing["max_ms"] or 0.0),
        units_without_verdict=int(missing["n"]),
        verdicts_without_unit=int(unknown["n"]),
        units_with_several_verdicts=int(several["n"]),
        rejected_not_fired=int(not_fired["n"]),
        fired_not_rejected=int(fired_passed["n"]),
        model_versions=sorted(timing["versions"] or []),
        gate=build_reconciliation(client, db, lot, positive_release=positive_release),
        **recipe_sections(client, db, lot),
    )


def recipe_sections(client: ClickHouseClient, db: str, lot: str) -> dict:
    """Recipes, measurement spread and duplicate serials of a lot (empty for classifier-only lots)."""
    p = {"lot": lot}
    recipes = client.query(
        f"""SELECT recipe, uniqExact(unit_id) AS n FROM {db}.inspections FINAL
            WHERE lot = {{lot:String}} AND recipe != '' GROUP BY recipe ORDER BY recipe""", p).rows
    measurements = client.query(
        f"""SELECT key AS name, count() AS n, avg(value) AS mean, min(value) AS min, max(value) AS max,
                   quantileExact(0.05)(value) AS p05, quantileExact(0.95)(value) AS p95
            FROM {db}.inspections FINAL ARRAY JOIN mapKeys(measurements) AS key, mapValues(measurements) AS value
            WHERE lot = {{lot:String}} AND inspected GROUP BY key ORDER BY key""", p).named()
    duplicates = client.query(
        f"""SELECT measured_text['serial'] AS serial, count() AS n, arraySort(groupArray(unit_id)) AS units
            FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND purpose = '' AND measured_text['serial'] != ''
            GROUP BY serial HAVING n > 1 ORDER BY serial""", p).named()
    return {
        "recipes": [(str(a), int(b)) for a, b in recipes],
        "measurements": measurements,
        "duplicate_serials": [{"serial": d["serial"], "units": list(d["units"])} for d in duplicates],
    }
