"""Challenge runs: a recipe's set of known units sent through a live line (docs/validation.md).

A challenge set is a dataset folder (docs/datasets.md) holding every defect class the recipe's
inspections can reject plus good units. `register_set` checks it against the recipe and records
it, with its dataset hash, in the registry file ``<state_dir>/challenge_sets.json`` (audited and
e-signed); the recipe's ``[challenge]`` table names the set by its id and pins that hash, so a set
changed after the recipe was approved is refused. `run_challenge` publishes every image as a
frame of the line, marked ``ls-purpose: challenge`` (never production), waits for each unit's
stored verdict and gate event, judges the recipe's criteria and records the result (audit record
with an e-signature, and a ``challenge_runs`` row the batch record reads).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from pipeline.audit.record import CHALLENGE_RUN_ACTION, AuditEvent, AuditRecord
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.times import now_ns
from pipeline.datasets.folder import Dataset, DatasetError, dataset_hash, load_dataset
from pipeline.recipes.schema import CHALLENGE_PHASES as PHASES
from pipeline.recipes.schema import ChallengeSpec, Recipe, RecipeError
from pipeline.settings import Settings
from pipeline.wire.messages import PURPOSE_CHALLENGE, VERDICT_ORDER_SQL, WORST_VERDICT_SQL, FrameMeta, GroundTruth

log = logging.getLogger(__name__)

REGISTER_ACTION = "challenge.register"
RUN_ACTION = CHALLENGE_RUN_ACTION
REGISTRY_FILE = "challenge_sets.json"
# Defect classes each measurement kind can reject (a classifier's come from its live model).
_KIND_DEFECTS: dict[str, tuple[str, ...]] = {
    "blister": ("empty-pocket", "broken-tablet", "foreign-tablet"),
    "label": ("unreadable", "wrong-gtin", "wrong-lot"),
}


class ChallengeError(ValueError):
    """A challenge set or run that cannot be used; the message says why (nothing was recorded)."""


# ----------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class ChallengeSet:
    """One registered set: where its folder is and the dataset hash it had when registered."""

    id: str
    path: str
    sha256: str
    recipe: str  # the recipe ref it was checked against (id@vN)
    product: str
    classes: list[str]
    units: int
    defects: int
    registered_by: str
    registered_at: str


def registry_path(settings: Settings) -> Path:
    return settings.state_dir / REGISTRY_FILE


def load_registry(path: Path) -> dict[str, ChallengeSet]:
    """Registered sets by id ({} when none was registered yet)."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {k: ChallengeSet(**v) for k, v in doc.items()}
    except (ValueError, TypeError) as exc:
        raise ChallengeError(f"challenge set registry {path} is unreadable: {exc}") from None


def _save_registry(path: Path, sets: dict[str, ChallengeSet]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({k: asdict(v) for k, v in sorted(sets.items())}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def recipe_defect_classes(recipe: Recipe, repository: Path) -> list[str]:
    """Every defect class the recipe's inspections can reject: a classifier's classes of its live
    model version (model card / config), a measurement kind's own failure classes."""
    from pipeline.model.repository import (
        RepositoryError,
        classes_by_version,
        live_version,
        product_models,
        read_config,
    )

    classes: set[str] = set()
    for spec in recipe.inspections:
        if spec.kind == "classifier":
            try:
                classifier = product_models(repository, recipe.product, {recipe.product: spec.model}).classifier
                config = read_config(repository, classifier)
            except RepositoryError as exc:
                raise ChallengeError(f"inspection {spec.name}: {exc}") from None
            live = live_version(config)
            names = classes_by_version(config).get(live) if live is not None else None
            if not names:
                raise ChallengeError(f"inspection {spec.name}: model {classifier} has no live version with classes")
            classes |= {c for c in names if c != "good"}
        elif spec.kind == "vial":
            p = recipe.params[spec.name]
            classes |= {"low-fill", "high-fill", "particles"}
            classes |= {"missing-cap"} if getattr(p, "require_cap", False) else set()
            classes |= {"missing-stopper"} if getattr(p, "require_stopper", False) else set()
        else:
            classes |= set(_KIND_DEFECTS.get(spec.kind, ()))
    return sorted(classes)


def set_problems(dataset: Dataset, recipe: Recipe, classes: Sequence[str]) -> list[str]:
    """Why `dataset` cannot be the recipe's challenge set (empty when it can)."""
    problems: list[str] = []
    other = sorted(set(dataset.products) - {recipe.product})
    if other:
        problems.append(f"units of other products than the recipe's {recipe.product!r}: {', '.join(other)}")
    present = {r.defect for r in dataset.rows if r.is_defect}
    missing = sorted(set(classes) - present)
    if missing:
        problems.append(f"missing defect classes of recipe {recipe.ref}: {', '.join(missing)}")
    unknown = sorted(present - set(classes))
    if unknown:
        problems.append(f"defect classes the recipe cannot reject: {', '.join(unknown)} "
                        f"(the recipe's: {', '.join(classes)})")
    if not any(not r.is_defect for r in dataset.rows):
        problems.append("no good units")
    return problems


def register_set(
    settings: Settings, trail: AuditTrail, guard: Guard, who: Principal, recipe: Recipe, data: Path,
    reason: str, meaning: str = "approved", set_id: str | None = None,
) -> tuple[ChallengeSet, AuditRecord, AuditRecord]:
    """Check `data` against `recipe`, record it in the registry, audit and sign the registration.

    Returns (set, audit record, signature). Refusals raise before anything is written."""
    from pipeline.auth.signatures import sign_record

    set_id = set_id or recipe.id
    guard.authorize(who, REGISTER_ACTION, set_id)
    if not reason.strip():
        raise guard.refuse(who.username, who.role, REGISTER_ACTION, set_id, "a reason is required")
    try:
        dataset = load_dataset(data)
    except DatasetError as exc:
        raise ChallengeError(str(exc)) from None
    classes = recipe_defect_classes(recipe, settings.triton.model_repository)
    problems = set_problems(dataset, recipe, classes)
    if problems:
        raise ChallengeError(f"challenge set {dataset.root} refused for {recipe.ref}: " + "; ".join(problems))
    entry = ChallengeSet(
        id=set_id, path=str(dataset.root), sha256=dataset_hash(dataset), recipe=recipe.ref, product=recipe.product,
        classes=classes, units=len(dataset), defects=sum(r.is_defect for r in dataset.rows),
        registered_by=who.username, registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = registry_path(settings)
    sets = load_registry(path)
    previous = sets.get(set_id)
    record = trail.record(AuditEvent(
        REGISTER_ACTION, subject=set_id, user=who.username, role=who.role,
        old_value=previous.sha256 if previous else "", new_value=entry.sha256, reason=reason, detail=asdict(entry),
    ))
    signature = sign_record(trail, guard, who, record.record_id, meaning, reason)
    sets[set_id] = entry
    _save_registry(path, sets)
    return entry, record, signature


def resolve_set(settings: Settings, spec: ChallengeSpec) -> Dataset:
    """The recipe's set, loaded and checked: registered, and its content still hashes to what the
    recipe pins (and what was registered)."""
    entry = load_registry(registry_path(settings)).get(spec.set)
    if entry is None:
        raise ChallengeError(f"challenge set {spec.set!r} is not registered (linesight challenge register)")
    try:
        dataset = load_dataset(Path(entry.path))
    except DatasetError as exc:
        raise ChallengeError(f"challenge set {spec.set!r}: {exc}") from None
    digest = dataset_hash(dataset)
    if digest != spec.sha256:
        raise ChallengeError(f"challenge set {spec.set!r} at {entry.path} hashes to {digest}, the recipe pins "
                             f"{spec.sha256}: the set changed (or the recipe names another)")
    if digest != entry.sha256:
        raise ChallengeError(f"challenge set {spec.set!r} hashes to {digest}, registered as {entry.sha256}")
    return dataset


# ----------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class UnitOutcome:
    """One challenge unit: what it is and what the line did with it."""

    unit_id: str
    label: str  # good | defect
    defect: str  # its true class
    verdict: str = ""  # stored verdict ('' none)
    cause: str = ""
    predicted: str = ""
    gate: str = ""  # gate outcome ('' none)


@dataclass
class ChallengeResult:
    run_id: str
    line: str
    lot: str
    phase: str
    recipe: str
    set_id: str
    set_sha256: str
    units: int
    defects: int
    defects_rejected: int
    good: int
    good_removed: int
    good_review: int
    good_removed_limit: int
    review_limit: int
    passed: bool
    failures: list[str] = field(default_factory=list)
    user: str = ""
    started_ns: int = 0
    finished_ns: int = 0
    audit_record: str = ""
    signature: str = ""

    def to_text(self) -> str:
        head = (f"challenge {self.phase} of lot {self.lot} on line {self.line} ({self.recipe}, set {self.set_id} "
                f"{self.set_sha256[:12]}): {'PASSED' if self.passed else 'FAILED'}")
        body = [
            f"  defect units rejected by the model at the gate: {self.defects_rejected}/{self.defects} (all required)",
            f"  good units removed: {self.good_removed}/{self.good} (at most {self.good_removed_limit})",
            f"  good units in review: {self.good_review}/{self.good} (at most {self.review_limit})",
        ]
        body += [f"  - {f}" for f in self.failures]
        return "\n".join([head, *body])

    def row(self) -> dict[str, Any]:
        """The ``challenge_runs`` row."""
        return {
            "run_id": self.run_id, "line": self.line, "lot": self.lot, "phase": self.phase, "recipe": self.recipe,
            "set_id": self.set_id, "set_sha256": self.set_sha256, "units": self.units, "defects": self.defects,
            "defects_rejected": self.defects_rejected, "good": self.good, "good_removed": self.good_removed,
            "good_review": self.good_review, "passed": self.passed, "failures": list(self.failures),
            "user": self.user, "started_time": datetime.fromtimestamp(self.started_ns / 1e9, UTC),
            "finished_time": datetime.fromtimestamp(self.finished_ns / 1e9, UTC),
            "audit_record": self.audit_record, "signature": self.signature,
        }


def judge(spec: ChallengeSpec, outcomes: Sequence[UnitOutcome]) -> tuple[dict[str, int], list[str]]:
    """Counts and every failure of one run against the recipe's criteria.

    A defect unit counts as rejected only when the model judged it reject or review and the gate
    fired on it (a fail-safe reject proves the gate, not the inspection). A good unit may pass, or
    go to review / be removed within the recipe's limits; any unit without a stored verdict or
    gate event fails the run."""
    failures: list[str] = []
    defects = [o for o in outcomes if o.label == "defect"]
    good = [o for o in outcomes if o.label != "defect"]
    rejected = 0
    for o in outcomes:
        if not o.verdict:
            failures.append(f"{o.unit_id} ({o.defect}): no verdict stored")
        if not o.gate:
            failures.append(f"{o.unit_id} ({o.defect}): no gate event")
    for o in defects:
        if o.verdict in ("reject", "review") and o.cause == "model" and o.gate == "fired":
            rejected += 1
        elif o.verdict and o.gate:
            failures.append(f"{o.unit_id} ({o.defect}): not rejected by the model at the gate "
                            f"(verdict {o.verdict}, cause {o.cause}, gate {o.gate})")
    removed = [o for o in good if o.gate and o.gate != "passed" and o.verdict != "review"]
    review = [o for o in good if o.verdict == "review"]
    removed_limit, review_limit = spec.good_removed_limit(len(good)), spec.review_limit(len(good))
    if len(removed) > removed_limit:
        failures.append(f"{len(removed)} good units removed (at most {removed_limit}): "
                        + ", ".join(o.unit_id for o in removed))
    if len(review) > review_limit:
        failures.append(f"{len(review)} good units in review (at most {review_limit}): "
                        + ", ".join(o.unit_id for o in review))
    counts = {"units": len(outcomes), "defects": len(defects), "defects_rejected": rejected, "good": len(good),
              "good_removed": len(removed), "good_review": len(review), "good_removed_limit": removed_limit,
              "review_limit": review_limit}
    return counts, failures


# ----------------------------------------------------------------------------- the run


def challenge_unit_id(lot: str, phase: str, seq: int) -> str:
    """Distinct from every production unit of the lot (``<lot>-<seq7>``)."""
    return f"{lot}-CH{phase}-{seq:04d}"


def line_recipe(settings: Settings, line: str, timeout_s: float = 10.0) -> Recipe:
    """The recipe the line's workers run now: its latest activation, else its start recipe."""
    from pipeline.recipes.book import RecipeBook, RecipeFeed, load_defaults

    book = RecipeBook()
    load_defaults(settings, book)
    feed = RecipeFeed(settings, book).start()
    try:
        feed.wait_caught_up(timeout_s)
    finally:
        feed.stop()
    current = book.get(line)
    if current is None:
        raise ChallengeError(f"line {line!r} runs no recipe: a challenge needs the recipe's [challenge] table")
    if not isinstance(current, Recipe):
        raise ChallengeError(f"line {line!r}: {getattr(current, 'reason', current)}")
    return current


def publish_set(
    settings: Settings, dataset: Dataset, line: str, lot: str, phase: str, rate_per_s: float,
    publisher_factory: Callable[[Settings], Any] | None = None,
) -> list[UnitOutcome]:
    """Send every unit of the set as a frame of `line` (challenge-marked), at the line's pace."""
    from pipeline.gateway.publisher import FramePublisher, SimulatedEncoder

    publisher = (publisher_factory or FramePublisher)(settings)
    encoder = SimulatedEncoder(settings, line)
    camera = settings.simulator.camera
    units: list[UnitOutcome] = []
    interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
    next_at = time.monotonic()
    try:
        for seq, row in enumerate(dataset.rows):
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the line's unit pitch: units reach the gate as production does
            next_at += interval
            image = row.image.read_bytes()
            content_type = "image/jpeg" if image.startswith(b"\xff\xd8") else "image/png"
            capture = now_ns()
            unit = challenge_unit_id(lot, phase, seq)
            meta = FrameMeta(unit, line, camera, row.product, capture, content_type, lot, encoder.count_at(capture),
                             purpose=PURPOSE_CHALLENGE)
            label = cast(Literal["good", "defect"], row.label)
            truth = GroundTruth(unit, line, lot, row.product, label, row.defect, capture,
                                source=f"challenge:{dataset.relative(row)}", purpose=PURPOSE_CHALLENGE)
            if not publisher.publish(meta, image, truth):
                raise ChallengeError(f"frame {dataset.relative(row)} is over the broker's message size limit")
            units.append(UnitOutcome(unit, row.label, row.defect))
    finally:
        publisher.close()
    return units


def _observed(client: ClickHouseClient, db: str, lot: str, units: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per challenge unit of `units`: stored verdict, cause, predicted class and gate outcome."""
    rows = client.query(
        f"""SELECT u AS unit_id, v.worst AS verdict, v.how AS cause, v.predicted AS defect, g.outcome AS gate
            FROM (SELECT arrayJoin({{units:Array(String)}}) AS u) AS x
            LEFT JOIN (SELECT unit_id, {WORST_VERDICT_SQL} AS worst,
                              if(countIf(cause != 'model') > 0, 'failsafe', 'model') AS how,
                              argMax(defect, indexOf({VERDICT_ORDER_SQL}, verdict)) AS predicted
                       FROM {db}.inspections FINAL
                       WHERE lot = {{lot:String}} AND purpose = '{PURPOSE_CHALLENGE}' AND unit_id IN {{units:Array(String)}}
                       GROUP BY unit_id) AS v ON v.unit_id = x.u
            LEFT JOIN (SELECT unit_id, outcome FROM {db}.gate_events FINAL
                       WHERE lot = {{lot:String}} AND unit_id IN {{units:Array(String)}}) AS g ON g.unit_id = x.u""",
        {"lot": lot, "units": list(units)},
    ).named()
    return {str(r["unit_id"]): {k: str(r[k] or "") for k in ("verdict", "cause", "defect", "gate")} for r in rows}


def wait_outcomes(
    client: ClickHouseClient, db: str, lot: str, units: Sequence[UnitOutcome], timeout_s: float,
    stop: threading.Event | None = None,
) -> list[UnitOutcome]:
    """Probe until every unit has a stored verdict and gate event, or the deadline (then the
    missing ones are what the run reports)."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout_s
    ids = [u.unit_id for u in units]
    seen: dict[str, dict[str, str]] = {}
    while True:
        seen = _observed(client, db, lot, ids)
        if all(seen.get(i, {}).get("verdict") and seen.get(i, {}).get("gate") for i in ids):
            break
        if time.monotonic() >= deadline or stop.is_set():
            log.warning("challenge wait ended after %.0f s with units missing", timeout_s)
            break
        stop.wait(0.25)
    out = []
    for u in units:
        s = seen.get(u.unit_id, {})
        out.append(UnitOutcome(u.unit_id, u.label, u.defect, s.get("verdict", ""), s.get("cause", ""),
                               s.get("defect", ""), s.get("gate", "")))
    return out


def run_challenge(
    settings: Settings, client: ClickHouseClient, trail: AuditTrail, guard: Guard, who: Principal, line: str,
    lot: str, phase: str, *, meaning: str = "approved", reason: str = "", timeout_s: float = 120.0,
    rate_per_s: float | None = None, recipe: Recipe | None = None,
    publisher_factory: Callable[[Settings], Any] | None = None,
) -> ChallengeResult:
    """Run the line's recipe's challenge set for `lot` at its `phase`; record and sign the result.

    Everything that would make the run meaningless (no [challenge] table, unregistered or changed
    set, bad phase) is refused before a frame is sent."""
    from pipeline.auth.signatures import MEANINGS, sign_record

    guard.authorize(who, RUN_ACTION, line)
    if phase not in PHASES:
        raise ChallengeError(f"--when must be one of {', '.join(PHASES)}, got {phase!r}")
    if meaning not in MEANINGS:
        raise ChallengeError(f"unknown signature meaning {meaning!r}: one of {', '.join(MEANINGS)}")
    for name, value in (("line", line), ("lot", lot)):
        if not value.strip() or value != value.strip():
            raise ChallengeError(f"a {name} is required (no surrounding spaces)")
    try:
        recipe = recipe or line_recipe(settings, line)
    except RecipeError as exc:
        raise ChallengeError(str(exc)) from None
    spec = recipe.doc.challenge
    if spec is None:
        raise ChallengeError(f"recipe {recipe.ref} on line {line!r} has no [challenge] table")
    if recipe.stations:
        raise ChallengeError(f"recipe {recipe.ref} declares stations: challenge runs support one-camera lines only")
    dataset = resolve_set(settings, spec)
    started = now_ns()
    sent = publish_set(settings, dataset, line, lot, phase,
                       settings.simulator.rate_per_s if rate_per_s is None else rate_per_s, publisher_factory)
    outcomes = wait_outcomes(client, settings.clickhouse.database, lot, sent, timeout_s)
    counts, failures = judge(spec, outcomes)
    result = ChallengeResult(
        run_id=uuid.uuid4().hex[:16], line=line, lot=lot, phase=phase, recipe=recipe.ref, set_id=spec.set,
        set_sha256=spec.sha256, units=counts["units"], defects=counts["defects"],
        defects_rejected=counts["defects_rejected"], good=counts["good"], good_removed=counts["good_removed"],
        good_review=counts["good_review"], good_removed_limit=counts["good_removed_limit"],
        review_limit=counts["review_limit"], passed=not failures, failures=failures, user=who.username,
        started_ns=started, finished_ns=now_ns(),
    )
    detail = {k: v for k, v in asdict(result).items() if k not in ("audit_record", "signature")}
    detail["units_seen"] = [asdict(o) for o in outcomes]
    record = trail.record(AuditEvent(
        RUN_ACTION, subject=line, user=who.username, role=who.role, old_value=lot,
        new_value="passed" if result.passed else "failed", reason=reason or f"{phase} challenge of lot {lot}",
        detail=detail,
    ))
    signature = sign_record(trail, guard, who, record.record_id, meaning, reason or f"{phase} challenge of lot {lot}")
    result.audit_record, result.signature = record.record_id, signature.record_id
    client.insert_json_rows(f"{settings.clickhouse.database}.challenge_runs", [{**result.row(), "site": settings.site}])
    return result
