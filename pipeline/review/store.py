"""A lot's review units as the analytics store holds them: the machine's view of each (every
station's verdict, score, class probabilities, reasons, frame), the decisions recorded on it, and
what the lot's review amounts to (pipeline.review.rules decides what each unit's decisions mean).

A unit's machine verdict is its multi-station verdict (``unit_verdicts``) where it has one, else
its one-camera result; challenge units (``purpose``) are never production and never reviewed.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pipeline.clickhouse import ClickHouseClient
from pipeline.core.aql import SamplePlan, sample_plan
from pipeline.recipes.schema import ReviewSpec
from pipeline.review.rules import (
    AWAITING_QA,
    CONFIRMED_DEFECTIVE,
    KEPT_REJECTED,
    RECOVERED,
    UNDECIDED,
    Decision,
    ReviewUnit,
    status,
)
from pipeline.wire.messages import WORST_VERDICT_SQL, worst_verdict


@dataclass(frozen=True)
class StationView:
    """One station's judgement of the unit, as the person sees it."""

    station: str
    camera: str
    verdict: str
    defect: str
    score: float | None
    threshold: float | None
    review_threshold: float | None
    class_scores: dict[str, float]
    reasons: list[str]
    model: str  # name:version of the judging model ('' for measurements only)
    recipe: str
    capture_time: datetime
    has_frame: bool  # a JPEG was kept (stations that did not pass the unit) or the broker may still hold it
    frame_source: str  # where the judged frame is on the broker (topic:partition:offset; '' unknown)
    image_sha256: str  # the judged frame's hash (what a frame read back must match)


@dataclass(frozen=True)
class QueueUnit:
    """A review unit with everything the person deciding it needs."""

    unit: ReviewUnit
    line: str
    product: str
    recipe: str
    stations: list[StationView]
    decided: list[dict[str, Any]] = field(default_factory=list)  # the review_decisions rows, oldest first

    def classes(self) -> list[str]:
        """Defect classes a person may name: the model's classes and every defect the machine named."""
        found = {c for s in self.stations for c in s.class_scores if c != "good"}
        found |= {s.defect for s in self.stations if s.defect not in ("", "none", "uninspected")}
        return sorted(found)

    def to_json(self, qa_confirms: bool) -> dict[str, Any]:
        return {
            "unit_id": self.unit.unit_id, "lot": self.unit.lot, "line": self.line, "product": self.product,
            "recipe": self.recipe, "verdict": self.unit.verdict, "status": status(self.unit, qa_confirms),
            "classes": self.classes(), "stations": [asdict(s) for s in self.stations], "decisions": self.decided,
        }


@dataclass(frozen=True)
class ReviewSummary:
    """What a lot's review amounts to, for the batch record and its release check."""

    lot: str
    units: int  # production units of the lot
    queue: list[QueueUnit]  # its review units, oldest first
    counts: dict[str, int]  # status -> units (UNDECIDED ... KEPT_REJECTED)
    rules: ReviewSpec  # the lot's recipe's [review] rules
    plan: SamplePlan | None  # the sample plan of the recovered units (None: none recovered)
    sample: dict[str, Any] | None  # the latest recorded sample result

    @property
    def review_units(self) -> int:
        return len(self.queue)

    @property
    def max_review_fraction(self) -> float:
        return self.rules.max_review_fraction

    @property
    def review_fraction(self) -> float:
        return self.review_units / self.units if self.units else 0.0

    @property
    def over_limit(self) -> bool:
        return self.review_fraction > self.max_review_fraction + 1e-12

    @property
    def undecided(self) -> int:
        return self.counts[UNDECIDED] + self.counts[AWAITING_QA]

    def release_refusals(self) -> list[str]:
        """Why the lot's review refuses its release (empty: it does not)."""
        refusals = []
        if self.undecided:
            refusals.append(f"{self.undecided} review unit(s) undecided")
        if self.counts[RECOVERED] and self.sample is None:
            refusals.append(f"{self.counts[RECOVERED]} recovered unit(s) not sampled (ISO 2859-1)")
        elif self.sample is not None and not self.sample["accepted"]:
            refusals.append(f"the sample of recovered units failed ({self.sample['defective']} defective, "
                            f"accept {self.sample['accept']})")
        return refusals


def _unit_rows(client: ClickHouseClient, db: str, where: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    return client.query(
        f"""SELECT unit_id, lot, line, product, station, camera, verdict, defect, score, threshold, review_threshold,
                   class_scores, reasons, model_name, model_version, recipe, purpose, capture_time, frame_source,
                   image_sha256
            FROM {db}.inspections FINAL WHERE {where} ORDER BY unit_id, station""",
        params,
    ).named()


def _machine_verdicts(client: ClickHouseClient, db: str, units: Sequence[str]) -> dict[str, str]:
    """Each unit's multi-station verdict where it has one."""
    if not units:
        return {}
    rows = client.query(
        f"SELECT unit_id, verdict FROM {db}.unit_verdicts FINAL WHERE unit_id IN {{units:Array(String)}}",
        {"units": list(units)},
    ).rows
    return {str(u): str(v) for u, v in rows}


def _frames(client: ClickHouseClient, db: str, units: Sequence[str]) -> set[tuple[str, str]]:
    if not units:
        return set()
    rows = client.query(
        f"SELECT DISTINCT unit_id, station FROM {db}.reject_images FINAL WHERE unit_id IN {{units:Array(String)}}",
        {"units": list(units)},
    ).rows
    return {(str(u), str(s)) for u, s in rows}


def _decisions(client: ClickHouseClient, db: str, lot: str, unit: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The decisions recorded in `lot` (only `unit`'s when given), per unit, oldest first."""
    one = " AND unit_id = {unit:String}" if unit is not None else ""
    rows = client.query(
        f"""SELECT unit_id, decision, defect, user, role, decided_time, seconds_spent, audit_record, signature
            FROM {db}.review_decisions FINAL WHERE lot = {{lot:String}}{one} ORDER BY decided_time, audit_record""",
        {"lot": lot, **({"unit": unit} if unit is not None else {})},
    ).named()
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r["unit_id"]), []).append(r)
    return out


def _assemble(rows: list[dict[str, Any]], multi: dict[str, str], frames: set[tuple[str, str]],
              decided: dict[str, list[dict[str, Any]]]) -> list[QueueUnit]:
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_unit.setdefault(str(r["unit_id"]), []).append(r)
    units = []
    for unit_id, stations in by_unit.items():
        verdict = multi.get(unit_id) or worst_verdict(*(str(s["verdict"]) for s in stations))
        first = stations[0]
        decisions = decided.get(unit_id, [])
        unit = ReviewUnit(unit_id, str(first["lot"]), verdict, str(first["purpose"]), tuple(
            Decision(str(d["decision"]), str(d["defect"]), str(d["user"]), str(d["role"])) for d in decisions))
        views = [StationView(
            station=str(s["station"]), camera=str(s["camera"]), verdict=str(s["verdict"]), defect=str(s["defect"]),
            score=s["score"], threshold=s["threshold"], review_threshold=s["review_threshold"],
            class_scores={str(k): float(v) for k, v in dict(s["class_scores"] or {}).items()},
            reasons=[str(x) for x in s["reasons"] or []],
            model=f"{s['model_name']}:{s['model_version']}" if s["model_name"] else "", recipe=str(s["recipe"]),
            capture_time=s["capture_time"],
            has_frame=(unit_id, str(s["station"])) in frames or bool(s["frame_source"]),
            frame_source=str(s["frame_source"]), image_sha256=str(s["image_sha256"]),
        ) for s in stations]
        units.append(QueueUnit(unit, str(first["line"]), str(first["product"]), str(first["recipe"]), views, decisions))
    return units


def find_unit(client: ClickHouseClient, db: str, unit_id: str) -> QueueUnit | None:
    """A unit of any lot, as stored (None: no stored verdict)."""
    rows = _unit_rows(client, db, "unit_id = {unit:String}", {"unit": unit_id})
    if not rows:
        return None
    lot = str(rows[0]["lot"])
    found = _assemble(rows, _machine_verdicts(client, db, [unit_id]), _frames(client, db, [unit_id]),
                      _decisions(client, db, lot, unit_id))
    return found[0]


def lot_queue(client: ClickHouseClient, db: str, lot: str) -> list[QueueUnit]:
    """Every production review unit of the lot, decided or not, oldest first."""
    review = client.query(
        f"""SELECT unit_id FROM (
                SELECT unit_id, {WORST_VERDICT_SQL} AS verdict
                FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND purpose = '' GROUP BY unit_id)
            WHERE (verdict = 'review' AND unit_id NOT IN (SELECT unit_id FROM {db}.unit_verdicts FINAL WHERE lot = {{lot:String}}))
               OR unit_id IN (SELECT unit_id FROM {db}.unit_verdicts FINAL WHERE lot = {{lot:String}} AND verdict = 'review')""",
        {"lot": lot},
    ).rows
    ids = [str(r[0]) for r in review]
    if not ids:
        return []
    rows = _unit_rows(client, db, "unit_id IN {units:Array(String)} AND purpose = ''", {"units": ids})
    units = _assemble(rows, _machine_verdicts(client, db, ids), _frames(client, db, ids), _decisions(client, db, lot))
    return sorted((u for u in units if u.unit.verdict == "review"), key=lambda u: min(s.capture_time for s in u.stations))


def frame_jpeg(client: ClickHouseClient, db: str, unit_id: str, station: str) -> bytes | None:
    """The reduced JPEG kept of one station's frame of a removed unit (None: none kept)."""
    rows = client.query(
        f"""SELECT jpeg_base64 FROM {db}.reject_images FINAL
            WHERE unit_id = {{unit:String}} AND station = {{station:String}} LIMIT 1""",
        {"unit": unit_id, "station": station},
    ).rows
    return base64.b64decode(rows[0][0]) if rows else None


def lot_units(client: ClickHouseClient, db: str, lot: str) -> int:
    """Production units of the lot (any verdict)."""
    return int(client.query(
        f"SELECT uniqExact(unit_id) FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND purpose = ''",
        {"lot": lot},
    ).scalar() or 0)


def latest_sample(client: ClickHouseClient, db: str, lot: str) -> dict[str, Any] | None:
    rows = client.query(
        f"""SELECT lot, recovered, level, aql, code_letter, sample_size, accept, defective, accepted, user,
                   decided_time, audit_record, signature
            FROM {db}.review_samples FINAL WHERE lot = {{lot:String}} ORDER BY decided_time DESC LIMIT 1""",
        {"lot": lot},
    ).named()
    return rows[0] if rows else None


def summarize(client: ClickHouseClient, db: str, lot: str, rules: ReviewSpec) -> ReviewSummary:
    """What the lot's review amounts to under its recipe's [review] `rules`."""
    queue = lot_queue(client, db, lot)
    counts = dict.fromkeys((UNDECIDED, AWAITING_QA, RECOVERED, CONFIRMED_DEFECTIVE, KEPT_REJECTED), 0)
    for u in queue:
        counts[status(u.unit, rules.qa_confirms)] += 1
    recovered = counts[RECOVERED]
    plan = sample_plan(recovered, rules.aql_level, rules.aql) if recovered else None
    return ReviewSummary(lot, lot_units(client, db, lot), queue, counts, rules, plan,
                         latest_sample(client, db, lot) if recovered else None)
