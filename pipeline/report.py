"""The run report: what was published, decided, rejected and fired for one lot, scored against
ground truth, straight from ClickHouse (so an analyst can reproduce every figure in SQL).

Verdicts are counted apart: `passed` (inspected and shipped), `rejected` (by the model or fail
safe), `review` (in a model's grey zone: removed by the gate, a person decides). A defect
"escapes" only when it passed; a good unit removed (reject or review) is a false reject.

`build_reconciliation` is the batch record of the reject gate (``gate_events``): per line, every
captured unit is inspected-passed, inspected-rejected (the model's reject or review), or
fail-safe rejected (late: no verdict before its cutoff; failsafe: not inspectable, or the
pipeline was unhealthy), and nothing is left unaccounted; with the alarms of the batch's time.
`linesight report batch LOT` prints it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

from pipeline.clickhouse import ClickHouseClient


@dataclass(frozen=True)
class LineReconciliation:
    """One line's units of a lot, by what happened to them at the reject gate."""

    line: str
    captured: int  # distinct units known from the gate, the verdicts or ground truth
    inspected_passed: int  # passed the gate on a pass verdict received in time
    inspected_rejected: int  # fired on the model's verdict (reject or review)
    review: int  # of those, review verdicts (a person decides)
    failsafe_late: int  # fired: no verdict at the actuator before the unit's cutoff
    failsafe_other: int  # fired: not inspectable (worker's fail-safe verdict) or pipeline unhealthy
    fire_failed: int  # the PLC did not confirm the fire: the unit may have passed
    missed: int  # the gate window had closed before the actuator could act
    no_gate_event: int  # known unit with no gate record at all (actuator never saw it)
    passed_without_pass_verdict: int  # must be 0: passed although no pass verdict is stored
    not_captured: int  # commands for units the camera never captured (fired anyway)
    late_verdicts: int  # units whose verdict did come, but after the cutoff (subset of failsafe_late)
    margin_p50_ms: float  # verdict-to-fire-time margin of units with a verdict in time
    margin_min_ms: float

    @property
    def failsafe_rejected(self) -> int:
        return self.failsafe_late + self.failsafe_other

    @property
    def accounted(self) -> int:
        return self.inspected_passed + self.inspected_rejected + self.failsafe_rejected

    @property
    def unaccounted(self) -> int:
        return self.captured - self.accounted


@dataclass(frozen=True)
class AlarmEntry:
    code: str
    raised: datetime
    cleared: datetime | None
    reason: str
    clear_reason: str
    source: str


@dataclass(frozen=True)
class BatchReconciliation:
    lot: str
    lines: list[LineReconciliation]
    alarms: list[AlarmEntry] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(int(getattr(r, name)) for r in self.lines)

    @property
    def every_unit_accounted(self) -> bool:
        return (
            self.total("captured") > 0
            and self.total("unaccounted") == 0
            and self.total("passed_without_pass_verdict") == 0
        )

    def as_dict(self) -> dict:
        keys = ("captured", "inspected_passed", "inspected_rejected", "review", "failsafe_rejected", "failsafe_late",
                "failsafe_other", "fire_failed", "missed", "no_gate_event", "unaccounted",
                "passed_without_pass_verdict", "not_captured", "late_verdicts")
        return {
            "lot": self.lot,
            "every_unit_accounted": self.every_unit_accounted,
            "totals": {k: self.total(k) for k in keys},
            "lines": [
                asdict(r) | {"failsafe_rejected": r.failsafe_rejected, "unaccounted": r.unaccounted} for r in self.lines
            ],
            "alarms": [
                {
                    "code": a.code, "raised": a.raised.isoformat(),
                    "cleared": a.cleared.isoformat() if a.cleared else None,
                    "reason": a.reason, "clear_reason": a.clear_reason, "source": a.source,
                }
                for a in self.alarms
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def to_text(self) -> str:
        ok = "OK" if self.every_unit_accounted else "FAILED"
        out = [f"Reject-gate reconciliation — lot {self.lot}: every unit accounted for: {ok}"]
        for r in self.lines:
            out += [
                f"  line {r.line}",
                f"    units captured           {r.captured:>8}",
                f"    inspected, passed        {r.inspected_passed:>8}",
                f"    inspected, rejected      {r.inspected_rejected:>8}  (of them review {r.review})",
                f"    fail-safe rejected       {r.failsafe_rejected:>8}  (late {r.failsafe_late}, of which verdict "
                f"after the cutoff {r.late_verdicts}; not inspectable or pipeline unhealthy {r.failsafe_other})",
                f"    unaccounted              {r.unaccounted:>8}  (fire not confirmed {r.fire_failed}, window "
                f"missed {r.missed}, never at the gate {r.no_gate_event})",
                f"    passed without a pass verdict {r.passed_without_pass_verdict}; commands for uncaptured units "
                f"{r.not_captured}",
                f"    verdict-to-fire margin   p50 {r.margin_p50_ms:.0f} ms, min {r.margin_min_ms:.0f} ms",
            ]
        if not self.lines:
            out.append("  no units recorded for this lot")
        out.append(f"  alarms during the lot     {len(self.alarms):>8}")
        for a in self.alarms:
            cleared = f"cleared {a.cleared:%Y-%m-%d %H:%M:%S.%f}"[:-3] if a.cleared else "STILL ACTIVE"
            out.append(f"    {a.code:<20} raised {a.raised:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f", {cleared}: {a.reason}")
        return "\n".join(out)


def build_reconciliation(client: ClickHouseClient, database: str, lot: str) -> BatchReconciliation:
    """Per line, what the reject gate did with each unit of ``lot`` (see `LineReconciliation`)."""
    db, q = database, "{lot:String}"
    units = f"""(SELECT line, unit_id FROM {db}.gate_events FINAL WHERE lot = {q}
                 UNION DISTINCT SELECT line, unit_id FROM {db}.inspections FINAL WHERE lot = {q}
                 UNION DISTINCT SELECT line, unit_id FROM {db}.ground_truth FINAL WHERE lot = {q})"""
    gate = f"""(SELECT line, unit_id, outcome, cause, verdict AS action, admitted, verdict_time, margin_ms
                FROM {db}.gate_events FINAL WHERE lot = {q})"""
    verdicts = f"(SELECT line, unit_id, verdict FROM {db}.inspections FINAL WHERE lot = {q})"
    rows = client.query(
        f"""SELECT u.line AS line,
                   count() AS captured,
                   countIf(g.outcome = 'passed') AS inspected_passed,
                   countIf(g.outcome = 'fired' AND g.cause = 'model') AS inspected_rejected,
                   countIf(g.outcome = 'fired' AND g.cause = 'model' AND v.verdict = 'review') AS review,
                   countIf(g.outcome = 'fired' AND g.cause = 'late') AS failsafe_late,
                   countIf(g.outcome = 'fired' AND g.cause = 'failsafe') AS failsafe_other,
                   countIf(g.outcome = 'fire_failed') AS fire_failed,
                   countIf(g.outcome = 'missed') AS missed,
                   countIf(g.outcome = '') AS no_gate_event,
                   countIf(g.outcome = 'passed' AND v.verdict != 'pass') AS passed_without_pass_verdict,
                   countIf(g.outcome != '' AND NOT g.admitted) AS not_captured,
                   countIf(g.outcome = 'fired' AND g.cause = 'late' AND v.verdict != '') AS late_verdicts,
                   quantileExactIf(0.5)(g.margin_ms, g.action != '' AND g.margin_ms IS NOT NULL) AS margin_p50,
                   minIf(g.margin_ms, g.action != '' AND g.margin_ms IS NOT NULL) AS margin_min
            FROM {units} AS u
            LEFT JOIN {gate} AS g ON g.line = u.line AND g.unit_id = u.unit_id
            LEFT JOIN {verdicts} AS v ON v.line = u.line AND v.unit_id = u.unit_id
            GROUP BY u.line ORDER BY u.line""",
        {"lot": lot},
    ).named()
    lines = [
        LineReconciliation(
            line=str(r["line"]),
            **{k: int(r[k] or 0) for k in (
                "captured", "inspected_passed", "inspected_rejected", "review", "failsafe_late", "failsafe_other",
                "fire_failed", "missed", "no_gate_event", "passed_without_pass_verdict", "not_captured",
                "late_verdicts")},
            margin_p50_ms=_num(r["margin_p50"]),
            margin_min_ms=_num(r["margin_min"]),
        )
        for r in rows
    ]
    alarms = client.query(
        f"""WITH span AS (
                SELECT min(coalesce(capture_time, window_start)) AS t0, max(acted_time) AS t1
                FROM {db}.gate_events FINAL WHERE lot = {q})
            SELECT code, raised_time, cleared_time, reason, clear_reason, source
            FROM {db}.alarms FINAL
            WHERE (SELECT count() FROM {db}.gate_events FINAL WHERE lot = {q}) > 0
              AND raised_time <= (SELECT t1 FROM span)
              AND (cleared_time IS NULL OR cleared_time >= (SELECT t0 FROM span))
            ORDER BY raised_time, code""",
        {"lot": lot},
    ).rows
    return BatchReconciliation(lot, lines, [AlarmEntry(str(a[0]), a[1], a[2], str(a[3]), str(a[4]), str(a[5])) for a in alarms])


def _num(value: object) -> float:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return f if f == f else 0.0  # NaN (no rows) -> 0


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


def build_report(client: ClickHouseClient, database: str, lot: str) -> RunReport:
    db, q = database, "{lot:String}"  # bound server-side, never spliced into the SQL
    truth = f"(SELECT unit_id, label, defect FROM {db}.ground_truth FINAL WHERE lot = {q})"
    verdicts = f"(SELECT unit_id, verdict, cause, inspected FROM {db}.inspections FINAL WHERE lot = {q})"
    fired = f"(SELECT unit_id FROM {db}.actuations FINAL WHERE lot = {q})"
    fired_on_model = f"(SELECT unit_id FROM {db}.actuations FINAL WHERE lot = {q} AND cause = 'model')"

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
            FROM {db}.inspections FINAL WHERE lot = {q} AND inspected"""
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
                SELECT unit_id FROM {db}.inspections WHERE lot = {q}
                GROUP BY unit_id HAVING uniqExact(verdict, cause) > 1)"""
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
        gate=build_reconciliation(client, db, lot),
        **recipe_sections(client, db, lot),
    )


def recipe_sections(client: ClickHouseClient, db: str, lot: str) -> dict:
    """Recipes, measurement spread and duplicate serials of a lot (empty for classifier-only lots)."""
    p = {"lot": lot}
    recipes = client.query(
        f"""SELECT recipe, count() AS n FROM {db}.inspections FINAL
            WHERE lot = {{lot:String}} AND recipe != '' GROUP BY recipe ORDER BY recipe""", p).rows
    measurements = client.query(
        f"""SELECT key AS name, count() AS n, avg(value) AS mean, min(value) AS min, max(value) AS max,
                   quantileExact(0.05)(value) AS p05, quantileExact(0.95)(value) AS p95
            FROM {db}.inspections FINAL ARRAY JOIN mapKeys(measurements) AS key, mapValues(measurements) AS value
            WHERE lot = {{lot:String}} AND inspected GROUP BY key ORDER BY key""", p).named()
    duplicates = client.query(
        f"""SELECT measured_text['serial'] AS serial, count() AS n, arraySort(groupArray(unit_id)) AS units
            FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND measured_text['serial'] != ''
            GROUP BY serial HAVING n > 1 ORDER BY serial""", p).named()
    return {
        "recipes": [(str(a), int(b)) for a, b in recipes],
        "measurements": measurements,
        "duplicate_serials": [{"serial": d["serial"], "units": list(d["units"])} for d in duplicates],
    }

