"""The reject gate's batch record: every captured unit of a lot accounted for, from ``gate_events``.

Per line, every captured unit is inspected-passed, inspected-rejected (the model's reject or
review), or fail-safe rejected (late: no verdict before its cutoff; failsafe: not inspectable,
or the pipeline was unhealthy; on a positive-release gate, not released: a unit with no gate
record, e.g. while the actuator was down, was never released, so the diverter rejected it), and
nothing is left unaccounted; with the alarms of the
batch's time. On a multi-station line (docs/actuation.md) a unit counts once, by its worst station
verdict, and each station gets its own counts (frames judged, passed, rejected, review; units it
left without a verdict by the cutoff, from ``unit_verdicts``). `linesight report batch LOT` prints it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

from pipeline.clickhouse import ClickHouseClient
from pipeline.wire.messages import WORST_VERDICT_SQL


@dataclass(frozen=True)
class StationCounts:
    """One station of a multi-station line: its frames of the lot, and the units it missed."""

    station: str
    judged: int  # station frames with a result
    passed: int
    rejected: int  # reject verdicts, fail-safe ones included
    review: int
    missing: int  # units with no result from this station by their cutoff


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
    no_gate_event: int  # known unit with no gate record at all (actuator never saw it): may have passed
    passed_without_pass_verdict: int  # must be 0: passed although no pass verdict is stored
    not_captured: int  # commands for units the camera never captured (fired anyway)
    late_verdicts: int  # units whose verdict did come, but after the cutoff (subset of failsafe_late)
    margin_p50_ms: float  # verdict-to-fire-time margin of units with a verdict in time
    margin_min_ms: float
    # Positive release: units with no gate record, never released, so rejected by the diverter.
    not_released: int = 0
    stations: list[StationCounts] = field(default_factory=list)  # multi-station lines only

    @property
    def failsafe_rejected(self) -> int:
        return self.failsafe_late + self.failsafe_other + self.not_released

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
                "failsafe_other", "not_released", "fire_failed", "missed", "no_gate_event", "unaccounted",
                "passed_without_pass_verdict", "not_captured", "late_verdicts")
        return {
            "lot": self.lot,
            "every_unit_accounted": self.every_unit_accounted,
            "totals": {k: self.total(k) for k in keys},
            "lines": [
                {k: v for k, v in asdict(r).items() if k != "stations" or v}  # one-camera lines: as before
                | {"failsafe_rejected": r.failsafe_rejected, "unaccounted": r.unaccounted} for r in self.lines
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
                f"after the cutoff {r.late_verdicts}; not inspectable or pipeline unhealthy {r.failsafe_other}; "
                f"never released {r.not_released})",
                f"    unaccounted              {r.unaccounted:>8}  (fire not confirmed {r.fire_failed}, window "
                f"missed {r.missed}, never at the gate {r.no_gate_event})",
                f"    passed without a pass verdict {r.passed_without_pass_verdict}; commands for uncaptured units "
                f"{r.not_captured}",
                f"    verdict-to-fire margin   p50 {r.margin_p50_ms:.0f} ms, min {r.margin_min_ms:.0f} ms",
            ]
            if r.stations:
                out.append(f"    {'station':<20} {'judged':>8} {'passed':>8} {'rejected':>8} {'review':>8} {'missing':>8}")
                out += [f"    {c.station:<20} {c.judged:>8} {c.passed:>8} {c.rejected:>8} {c.review:>8} {c.missing:>8}"
                        for c in r.stations]
        if not self.lines:
            out.append("  no units recorded for this lot")
        out.append(f"  alarms during the lot     {len(self.alarms):>8}")
        for a in self.alarms:
            cleared = f"cleared {a.cleared:%Y-%m-%d %H:%M:%S.%f}"[:-3] if a.cleared else "STILL ACTIVE"
            out.append(f"    {a.code:<20} raised {a.raised:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f", {cleared}: {a.reason}")
        return "\n".join(out)


def build_reconciliation(
    client: ClickHouseClient, database: str, lot: str, *, positive_release: bool = False
) -> BatchReconciliation:
    """Per line, what the reject gate did with each unit of ``lot`` (see `LineReconciliation`).

    ``positive_release``: the gate rejects what it is not told to release (``plc.gate_mode``), so a
    unit with no gate record was rejected; otherwise it may have passed and is unaccounted.
    """
    db, q = database, "{lot:String}"
    units = f"""(SELECT line, unit_id FROM {db}.gate_events FINAL WHERE lot = {q} AND purpose = ''
                 UNION DISTINCT SELECT line, unit_id FROM {db}.inspections FINAL WHERE lot = {q} AND purpose = ''
                 UNION DISTINCT SELECT line, unit_id FROM {db}.ground_truth FINAL WHERE lot = {q} AND purpose = '')"""
    gate = f"""(SELECT line, unit_id, outcome, cause, verdict AS action, admitted, verdict_time, margin_ms
                FROM {db}.gate_events FINAL WHERE lot = {q} AND purpose = '')"""
    verdicts = f"({unit_verdicts_sql(db)})"
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
    stations = _station_counts(client, db, lot)
    lines = []
    for r in rows:
        counts = {k: int(r[k] or 0) for k in (
            "captured", "inspected_passed", "inspected_rejected", "review", "failsafe_late", "failsafe_other",
            "fire_failed", "missed", "no_gate_event", "passed_without_pass_verdict", "not_captured", "late_verdicts")}
        not_released = counts["no_gate_event"] if positive_release else 0
        counts["no_gate_event"] -= not_released
        lines.append(LineReconciliation(line=str(r["line"]), **counts, margin_p50_ms=_num(r["margin_p50"]),
                                        margin_min_ms=_num(r["margin_min"]), not_released=not_released,
                                        stations=stations.get(str(r["line"]), [])))
    alarms = client.query(
        f"""WITH span AS (
                SELECT min(coalesce(capture_time, window_start)) AS t0, max(acted_time) AS t1
                FROM {db}.gate_events FINAL WHERE lot = {q} AND purpose = '')
            SELECT code, raised_time, cleared_time, reason, clear_reason, source
            FROM {db}.alarms FINAL
            WHERE (SELECT count() FROM {db}.gate_events FINAL WHERE lot = {q} AND purpose = '') > 0
              AND raised_time <= (SELECT t1 FROM span)
              AND (cleared_time IS NULL OR cleared_time >= (SELECT t0 FROM span))
            ORDER BY raised_time, code""",
        {"lot": lot},
    ).rows
    return BatchReconciliation(lot, lines, [AlarmEntry(str(a[0]), a[1], a[2], str(a[3]), str(a[4]), str(a[5])) for a in alarms])


def unit_verdicts_sql(db: str) -> str:
    """SELECT line, unit_id, verdict of each unit of lot ``{lot:String}`` from ``inspections``: a
    multi-station unit has a row per station frame, and its worst verdict is the unit's."""
    return f"""SELECT line, unit_id, {WORST_VERDICT_SQL} AS verdict
               FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND purpose = '' GROUP BY line, unit_id"""


def _station_counts(client: ClickHouseClient, db: str, lot: str) -> dict[str, list[StationCounts]]:
    """Per line, per station: the lot's station frames by verdict, and the units each station
    left without a result (``unit_verdicts.missing``). Empty for one-camera lines."""
    rows = client.query(
        f"""SELECT line, station, sum(judged) AS judged, sum(passed) AS passed, sum(rejected) AS rejected,
                   sum(review) AS review, sum(missing) AS missing
            FROM (
                SELECT line, station, 1 AS judged, verdict = 'pass' AS passed, verdict = 'reject' AS rejected,
                       verdict = 'review' AS review, 0 AS missing
                FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND purpose = '' AND station != ''
                UNION ALL
                SELECT line, arrayJoin(missing) AS station, 0, 0, 0, 0, 1
                FROM {db}.unit_verdicts FINAL WHERE lot = {{lot:String}} AND unit_id NOT IN (SELECT unit_id FROM {db}.inspections WHERE lot = {{lot:String}} AND purpose != '')
            )
            GROUP BY line, station ORDER BY line, station""",
        {"lot": lot},
    ).named()
    out: dict[str, list[StationCounts]] = {}
    for r in rows:
        out.setdefault(str(r["line"]), []).append(StationCounts(
            str(r["station"]), *(int(r[k] or 0) for k in ("judged", "passed", "rejected", "review", "missing"))))
    return out


def _num(value: object) -> float:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return f if f == f else 0.0  # NaN (no rows) -> 0
