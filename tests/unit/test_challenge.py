"""Challenge runs (docs/validation.md): the criteria, the challenge marker on the wire, challenge
units kept out of every production count, the batch record's section and release refusal, the
recipe's [challenge] table, set registration checks and the challenge_overdue alert."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_batch_report as batch_case
from report_pages import assert_readable, pdf_pages
from support import Msg
from test_batch_report import _gate, _result

from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.analytics.batch_record import build_batch_record, render_html, render_pdf
from pipeline.analytics.challenges import lot_challenges, release_refusals
from pipeline.analytics.reconciliation import build_reconciliation
from pipeline.analytics.run_report import build_report
from pipeline.analytics.sink import ClickHouseSink
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal
from pipeline.auth.sessions import SessionStore
from pipeline.auth.users import UserStore
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.datasets.folder import Dataset, Row
from pipeline.recipes.schema import RecipeError, ReviewSpec, parse_recipe
from pipeline.review.desk import ReviewDesk
from pipeline.settings import Settings
from pipeline.validation.challenge import ChallengeResult, UnitOutcome, challenge_unit_id, judge, set_problems
from pipeline.wire.messages import (
    H_PURPOSE,
    PURPOSE_CHALLENGE,
    FrameMeta,
    GroundTruth,
    InspectionResult,
    MessageError,
    header_purpose,
)

S = 1_000_000_000
SHA = "ab" * 32
RECIPE: dict[str, Any] = {
    "id": "tablets", "version": 1, "product": "tablet-round-white-10mm",
    "inspection": [{"name": "appearance", "kind": "classifier", "model": "tablet_inspector"}],
}


@pytest.fixture()
def lot_db(embedded_settings: Settings, chdb_client: ChdbClient) -> tuple[Settings, str]:
    """The batch record tests' lot of 8 production units (test_batch_report.py)."""
    return batch_case.lot_db.__wrapped__(embedded_settings, chdb_client)


def _spec(**challenge: Any):  # noqa: ANN202
    recipe = parse_recipe({**RECIPE, "challenge": {"set": "tablets", "sha256": SHA, **challenge}})
    assert recipe.doc.challenge is not None
    return recipe.doc.challenge


# ----------------------------------------------------------------------------- criteria


def _units(*specs: tuple[str, str, str, str, str]) -> list[UnitOutcome]:
    return [UnitOutcome(f"L-CHstart-{i:04d}", label, "none" if label == "good" else "crack", verdict, cause, "", gate)
            for i, (label, verdict, cause, gate, _) in enumerate(specs)]


def test_every_defect_rejected_and_good_passed_is_a_pass() -> None:
    units = _units(("defect", "reject", "model", "fired", ""), ("defect", "review", "model", "fired", ""),
                   ("good", "pass", "model", "passed", ""), ("good", "pass", "model", "passed", ""))
    counts, failures = judge(_spec(), units)
    assert failures == []
    assert counts | {} == {"units": 4, "defects": 2, "defects_rejected": 2, "good": 2, "good_removed": 0,
                           "good_review": 0, "good_removed_limit": 0, "review_limit": 0}


def test_a_defect_not_rejected_by_the_model_at_the_gate_fails() -> None:
    units = _units(("defect", "pass", "model", "passed", ""),  # escaped
                   ("defect", "reject", "failsafe", "fired", ""),  # removed, but the model never judged it
                   ("defect", "reject", "model", "missed", ""),  # judged, but the gate missed it
                   ("good", "pass", "model", "passed", ""))
    counts, failures = judge(_spec(), units)
    assert counts["defects_rejected"] == 0 and len(failures) == 3
    assert "L-CHstart-0000 (crack): not rejected by the model at the gate (verdict pass" in failures[0]
    assert "cause failsafe" in failures[1] and "gate missed" in failures[2]


def test_good_units_removed_or_in_review_within_the_recipe_limits() -> None:
    good = [("good", "pass", "model", "passed", "")] * 6
    units = _units(("defect", "reject", "model", "fired", ""), *good[:3],
                   ("good", "reject", "model", "fired", ""), ("good", "review", "model", "fired", ""),
                   ("good", "review", "model", "fired", ""))
    _, failures = judge(_spec(), units)  # defaults: none removed, none in review
    assert failures == [f"1 good units removed (at most 0): {units[4].unit_id}",
                        f"2 good units in review (at most 0): {units[5].unit_id}, {units[6].unit_id}"]
    assert judge(_spec(max_good_removed=1, max_review_fraction=0.34), units)[1] == []  # 2 of 6 in review
    assert judge(_spec(max_good_removed_fraction=0.2, max_review_fraction=0.34), units)[1] == []  # 1 of 6
    assert len(judge(_spec(max_good_removed_fraction=0.1, max_review_fraction=0.5), units)[1]) == 1


def test_a_unit_without_a_verdict_or_gate_event_fails_the_run() -> None:
    units = _units(("defect", "", "", "", ""), ("good", "pass", "model", "", ""))
    _, failures = judge(_spec(), units)
    assert failures == ["L-CHstart-0000 (crack): no verdict stored", "L-CHstart-0000 (crack): no gate event",
                        "L-CHstart-0001 (none): no gate event"]


# ----------------------------------------------------------------------------- recipe [challenge]


def test_challenge_table_validated_with_clear_errors_and_absent_keeps_the_hash() -> None:
    plain = parse_recipe(dict(RECIPE))
    with_table = parse_recipe({**RECIPE, "challenge": {"set": "tablets", "sha256": SHA}})
    assert plain.sha256 != with_table.sha256 and "challenge" not in plain.to_dict()
    assert plain.sha256 == parse_recipe(dict(RECIPE)).sha256
    with pytest.raises(RecipeError) as err:
        parse_recipe({**RECIPE, "challenge": {"set": "tablets", "sha256": "nothex", "every_defect_rejected": False,
                                              "max_review_fraction": 1.5, "speed": 2}})
    text = "; ".join(err.value.problems)
    assert "challenge.sha256" in text and "challenge.every_defect_rejected" in text and "must be true" in text
    assert "challenge.max_review_fraction" in text and "challenge.speed" in text
    with pytest.raises(RecipeError, match="not both"):
        parse_recipe({**RECIPE, "challenge": {"set": "tablets", "sha256": SHA, "max_good_removed": 1,
                                              "max_good_removed_fraction": 0.1}})


def test_a_set_missing_defect_classes_is_refused_with_the_list(tmp_path: Path) -> None:
    recipe = parse_recipe(dict(RECIPE))
    rows = (Row(tmp_path / "a.png", recipe.product, "defect", "crack"),
            Row(tmp_path / "b.png", recipe.product, "defect", "scratch"),
            Row(tmp_path / "c.png", "other-product", "defect", "crack"))
    problems = set_problems(Dataset(tmp_path, rows), recipe, ["chip", "crack", "discoloration"])
    assert problems == [
        "units of other products than the recipe's 'tablet-round-white-10mm': other-product",
        "missing defect classes of recipe tablets@v1: chip, discoloration",
        "defect classes the recipe cannot reject: scratch (the recipe's: chip, crack, discoloration)",
        "no good units",
    ]


# ----------------------------------------------------------------------------- the marker


def test_challenge_marker_round_trip_and_old_messages_are_production() -> None:
    meta = FrameMeta("LOT-CHstart-0001", "line-1", "cam-1", "tablet-round-white-10mm", 1_780_000_000 * S,
                     lot="LOT", purpose=PURPOSE_CHALLENGE)
    headers = meta.to_headers()
    assert (H_PURPOSE, b"challenge") in headers
    assert FrameMeta.from_headers(headers) == meta
    production = dataclasses.replace(meta, purpose="")
    assert all(k != H_PURPOSE for k, _ in production.to_headers())
    assert FrameMeta.from_headers(production.to_headers()).purpose == ""
    with pytest.raises(MessageError, match="ls-purpose 'calibration' is not one of"):
        FrameMeta.from_headers([*production.to_headers(), (H_PURPOSE, b"calibration")])
    assert header_purpose([(H_PURPOSE, b"challenge")]) == "challenge"
    assert header_purpose([(H_PURPOSE, b"bogus")]) == ""  # unknown: counted as production, never hidden
    result = _result("u1", "line-1", "LOT", "pass", "none", 1_780_000_000 * S)
    marked = dataclasses.replace(result, purpose=PURPOSE_CHALLENGE)
    assert InspectionResult.from_json(marked.to_json()).purpose == "challenge"
    old = result.to_json().replace(b',"purpose":""', b"")
    assert b"purpose" not in old and InspectionResult.from_json(old).purpose == ""
    assert challenge_unit_id("LOT", "end", 7) == "LOT-CHend-0007"


# ----------------------------------------------------------------------------- production counts


def _store_challenge(settings: Settings, client: ChdbClient, lot: str, phase: str, t0: int,
                     passed: bool = True) -> None:
    """Challenge units of `lot` through the sink (marked), and their run's row."""
    k, msgs = settings.kafka, list[Msg]()
    for i, (label, verdict, defect) in enumerate([("defect", "reject", "crack"), ("defect", "reject", "chip"),
                                                  ("good", "pass", "none")]):
        unit, t = challenge_unit_id(lot, phase, i), t0 + i * S // 10
        result = dataclasses.replace(_result(unit, "line-1", lot, verdict, defect, t), purpose=PURPOSE_CHALLENGE)
        gate = dataclasses.replace(_gate(unit, "line-1", lot, "fired" if verdict != "pass" else "passed", "model", t,
                                         "reject" if verdict != "pass" else "pass"), purpose=PURPOSE_CHALLENGE)
        truth = GroundTruth(unit, "line-1", lot, "p", label, defect, t, "challenge:x.png",  # type: ignore[arg-type]
                            purpose=PURPOSE_CHALLENGE)
        for topic, value in ((k.topic_results, result.to_json()), (k.topic_gate_events, gate.to_json()),
                             (k.topic_truth, truth.to_json())):
            msgs.append(Msg(topic, value, next(_OFFSETS)))
    ClickHouseSink(settings, client).write(msgs)  # type: ignore[arg-type]
    run = ChallengeResult(run_id=f"run-{phase}", line="line-1", lot=lot, phase=phase, recipe="tablets@v1",
                          set_id="tablets", set_sha256=SHA, units=3, defects=2, defects_rejected=2 if passed else 1,
                          good=1, good_removed=0, good_review=0, good_removed_limit=0, review_limit=0, passed=passed,
                          failures=[] if passed else ["L-CHend-0001 (chip): not rejected"], user="quinn",
                          started_ns=t0, finished_ns=t0 + S, audit_record="system#9", signature="system#10")
    client.insert_json_rows(f"{settings.clickhouse.database}.challenge_runs", [run.row()])


def test_challenge_units_never_count_as_production(lot_db: tuple[Settings, str], chdb_client: ChdbClient) -> None:
    settings, lot = lot_db
    db = settings.clickhouse.database
    before = build_reconciliation(chdb_client, db, lot).as_dict()
    report_before = build_report(chdb_client, db, lot).to_json()
    _store_challenge(settings, chdb_client, lot, "start", 1_780_000_100 * S)
    assert build_reconciliation(chdb_client, db, lot).as_dict() == before
    assert build_report(chdb_client, db, lot).to_json() == report_before
    stored = chdb_client.query(f"SELECT count() FROM {db}.inspections FINAL WHERE purpose = 'challenge'").rows
    assert stored == [[3]] or stored == [(3,)]


def test_batch_record_section_and_release_refused(
    lot_db: tuple[Settings, str], chdb_client: ChdbClient, tmp_path: Path
) -> None:
    settings, lot = lot_db
    db = settings.clickhouse.database
    trail = AuditTrail.from_settings(settings, chdb_client)
    assert release_refusals(lot_challenges(chdb_client, db, lot)) == ["start challenge missing", "end challenge missing"]
    _store_challenge(settings, chdb_client, lot, "start", 1_780_000_100 * S)
    _store_challenge(settings, chdb_client, lot, "end", 1_780_000_200 * S, passed=False)
    record = build_batch_record(chdb_client, db, lot, trail)
    assert record.captured == 8 and dict(record.rejects_by_class) == {"crack": 2, "chip": 1, "uninspected": 1}
    assert record.decisions_audited == 8  # the challenge units' decisions are audited, but not the lot's
    challenge_decisions = chdb_client.query(
        f"SELECT count() FROM {db}.audit_records WHERE action = 'inspection.decision' "
        "AND JSONExtractString(detail, 'purpose') = 'challenge'").scalar()
    assert int(challenge_decisions) == 6
    assert [(c.phase, c.passed) for c in record.challenges] == [("start", True), ("end", False)]
    assert record.release_refusals == ["end challenge failed (run run-end: L-CHend-0001 (chip): not rejected)",
                                       "1 review unit(s) undecided"]
    html, pdf = tmp_path / "lot.html", tmp_path / "lot.pdf"
    render_html(record, html)
    render_pdf(record, pdf)
    text = html.read_text(encoding="utf-8")
    assert "RELEASE REFUSED: end challenge failed" in text and "system#9" in text and "Challenge runs" in text
    assert_readable(pdf_pages(pdf, tmp_path / "pages"), (
        "Challenge runs", "RELEASE REFUSED: end challenge failed", "run-end", "L-CHend-0001 (chip): not rejected",
        "system#9", f"tablets (sha256 {SHA[:16]})",
    ))
    args = ["report", "batch", lot, "--release"]
    env = {"LINESIGHT_CLICKHOUSE__DATABASE": db, "LINESIGHT_STATE_DIR": str(settings.state_dir)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("LINESIGHT_CLICKHOUSE__URL", raising=False)
        assert main(args) == 3
        _store_challenge(settings, chdb_client, lot, "end", 1_780_000_300 * S)  # repeated, passed: the latest counts
        assert main(args) == 3  # the lot's review unit u5 is still undecided (docs/review.md)
        desk = ReviewDesk(chdb_client, db, trail, Guard(UserStore(chdb_client, db), SessionStore(chdb_client, db),
                                                        trail, 60), lambda ref: ReviewSpec())
        desk.decide(Principal("quinn", "qa"), "quinn-pass-1", lot, "u5", "defect", "crack")
        assert main(args) == 0
        assert main(["challenge", "status", "--lot", lot]) == 0


# ----------------------------------------------------------------------------- alert


def test_challenge_overdue_after_a_deploy_cleared_by_a_passed_challenge() -> None:
    engine = AlertEngine(AlertConfig(challenge_grace_s=60.0))
    t = 1_780_000_000 * S
    r1 = _result("u1", "line-1", "LOT", "pass", "none", t)
    v1 = dataclasses.replace(r1, model_version="1")
    kinds = lambda records: [(r.kind, r.state) for r in records if r.kind == "challenge_overdue"]  # noqa: E731
    assert kinds(engine.on_result(v1, t)) == []
    # Version 2 judges the line (a deploy): due now; production within the grace raises nothing.
    v2 = dataclasses.replace(r1, model_version="2")
    assert kinds(engine.on_result(v2, t + S)) == []
    assert kinds(engine.on_result(v2, t + 30 * S)) == []
    # Challenge units are not production: they neither raise it nor count in the line's rates.
    total = engine.lines["line-1"].total
    assert kinds(engine.on_result(dataclasses.replace(v2, purpose=PURPOSE_CHALLENGE), t + 90 * S)) == []
    assert engine.lines["line-1"].total == total
    raised = kinds(engine.on_result(v2, t + 62 * S))
    assert raised == [("challenge_overdue", "active")]
    assert engine.on_challenge("line-1", False, t + 70 * S) == []  # a failed run clears nothing
    assert kinds(engine.on_challenge("line-1", True, t + 80 * S)) == [("challenge_overdue", "cleared")]
    assert kinds(engine.on_result(v2, t + 200 * S)) == []  # the same judge: nothing due


# ----------------------------------------------------------------------------- register and run


class _Line:
    """A stand-in for the live line: what was published is judged (defects rejected, except the
    units in `escape`) and stored through the real sink when the publisher closes."""

    def __init__(self, settings: Settings, client: ChdbClient, escape: frozenset[str] = frozenset()) -> None:
        self.settings, self.client, self.escape = settings, client, escape
        self.frames: list[tuple[FrameMeta, GroundTruth]] = []

    def __call__(self, settings: Settings) -> _Line:
        return self

    def publish(self, meta: FrameMeta, image: bytes, truth: GroundTruth | None = None) -> bool:
        assert truth is not None and meta.purpose == PURPOSE_CHALLENGE and FrameMeta.from_headers(meta.to_headers())
        self.frames.append((meta, truth))
        return True

    def close(self) -> None:
        k, msgs = self.settings.kafka, list[Msg]()
        for meta, truth in self.frames:
            verdict = "reject" if truth.label == "defect" and truth.defect not in self.escape else "pass"
            result = dataclasses.replace(_result(meta.unit_id, meta.line, meta.lot, verdict, truth.defect,
                                                 meta.capture_ns), purpose=meta.purpose)
            gate = dataclasses.replace(_gate(meta.unit_id, meta.line, meta.lot, "fired" if verdict != "pass" else "passed",
                                             "model", meta.capture_ns, verdict), purpose=meta.purpose)
            for topic, value in ((k.topic_results, result.to_json()), (k.topic_gate_events, gate.to_json()),
                                 (k.topic_truth, truth.to_json())):
                msgs.append(Msg(topic, value, next(_OFFSETS)))  # distinct offsets: no deduplicated insert
        ClickHouseSink(self.settings, self.client).write(msgs)  # type: ignore[arg-type]


_OFFSETS = itertools.count(10_000)


@pytest.fixture()
def qa(embedded_settings: Settings, chdb_client: ChdbClient, tmp_path: Path):  # noqa: ANN201
    """A fresh database and state folder, a QA user, its guard and the trail."""
    from pipeline.auth.guard import Guard, Principal
    from pipeline.auth.sessions import SessionStore
    from pipeline.auth.users import UserStore

    db = f"chal_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    settings = embedded_settings.model_copy(update={
        "state_dir": tmp_path / "state", "clickhouse": embedded_settings.clickhouse.model_copy(update={"database": db}),
        "audit": embedded_settings.audit.model_copy(update={"publish_timeout_s": 0.0}),
    })
    users = UserStore(chdb_client, db)
    users.add("quinn", "qa", "quinn-pass-123", "test")
    users.add("olga", "operator", "olga-pass-123", "test")
    trail = AuditTrail.from_settings(settings, chdb_client)
    guard = Guard(users, SessionStore(chdb_client, db), trail, 60)
    return settings, trail, guard, Principal("quinn", "qa"), Principal("olga", "operator")


def _tablet_set(root: Path) -> Path:
    from pipeline.datasets.folder import write_dataset
    from pipeline.imaging.tablets import render_tablet
    from pipeline.wire.codec import encode_png

    rng, rows = np.random.default_rng(3), []
    for i, defect in enumerate(["chip", "contamination", "crack", "discoloration", None, None]):
        path = root / (defect or "good") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(render_tablet(rng, "tablet-round-white-10mm", defect, size=64)))
        rows.append(Row(path, "tablet-round-white-10mm", "defect" if defect else "good", defect or "none"))
    write_dataset(root, rows)
    return root


def test_register_then_run_records_a_signed_result(qa, chdb_client: ChdbClient, tmp_path: Path) -> None:  # noqa: ANN001
    from pipeline.auth.guard import AccessDenied
    from pipeline.recipes.schema import load_recipe
    from pipeline.validation.challenge import (
        ChallengeError,
        load_registry,
        register_set,
        registry_path,
        run_challenge,
    )

    settings, trail, guard, quinn, olga = qa
    db = settings.clickhouse.database
    recipe = load_recipe(Path("recipes/tablet-round-white-10mm.toml"), settings.triton.model_repository)
    data = _tablet_set(tmp_path / "set")
    # Refusals lose nothing: no registry written, no audit record.
    with pytest.raises(AccessDenied):
        register_set(settings, trail, guard, olga, recipe, data, "set")
    (data / "labels.csv").write_text("\n".join(x for x in (data / "labels.csv").read_text().splitlines()
                                               if "crack" not in x) + "\n")
    with pytest.raises(ChallengeError, match="missing defect classes of recipe tablet-round-white-10mm@v1: crack"):
        register_set(settings, trail, guard, quinn, recipe, data, "set")
    assert not registry_path(settings).exists()
    _tablet_set(data)
    entry, record, signature = register_set(settings, trail, guard, quinn, recipe, data, "CS-1")
    assert load_registry(registry_path(settings))[recipe.id] == entry and entry.units == 6 and entry.defects == 4
    assert signature.subject == record.record_id and record.new_value == entry.sha256

    with_table = parse_recipe({**recipe.to_dict(), "challenge": {"set": recipe.id, "sha256": entry.sha256}})
    with pytest.raises(ChallengeError, match="has no \\[challenge\\] table"):
        run_challenge(settings, chdb_client, trail, guard, quinn, "line-1", "LOT-9", "start", recipe=recipe)
    line = _Line(settings, chdb_client)
    result = run_challenge(settings, chdb_client, trail, guard, quinn, "line-1", "LOT-9", "start", recipe=with_table,
                           rate_per_s=0, timeout_s=5, publisher_factory=line)
    assert result.passed and (result.units, result.defects_rejected, result.good) == (6, 4, 2), result.to_text()
    assert [m.unit_id for m, _ in line.frames] == [f"LOT-9-CHstart-{i:04d}" for i in range(6)]
    failed = run_challenge(settings, chdb_client, trail, guard, quinn, "line-1", "LOT-9", "end", recipe=with_table,
                           rate_per_s=0, timeout_s=5, publisher_factory=_Line(settings, chdb_client, frozenset({"chip"})))
    assert not failed.passed and failed.failures[0].startswith("LOT-9-CHend-0000 (chip): not rejected")
    runs = lot_challenges(chdb_client, db, "LOT-9")
    assert [(c.phase, c.passed) for c in runs] == [("start", True), ("end", False)]
    assert release_refusals(runs)[0].startswith("end challenge failed")
    records = chdb_client.query(f"SELECT new_value FROM {db}.audit_records WHERE action = 'challenge.run' ORDER BY seq").rows
    assert [r[0] for r in records] == ["passed", "failed"]
    # A set changed after the recipe pinned it is refused before anything is sent.
    (data / "good" / "4.png").write_bytes((data / "good" / "5.png").read_bytes())
    untouched = _Line(settings, chdb_client)
    with pytest.raises(ChallengeError, match="the set changed"):
        run_challenge(settings, chdb_client, trail, guard, quinn, "line-1", "LOT-10", "start", recipe=with_table,
                      publisher_factory=untouched)
    assert untouched.frames == []


def test_alert_service_clears_on_a_passed_challenge_record_off_the_audit_topic(embedded_settings: Settings) -> None:
    from datetime import UTC, datetime

    from pipeline.alerts.record import AlertRecord
    from pipeline.alerts.service import AlertService, alert_config
    from pipeline.audit.record import AuditEvent, make_record

    published: list[AlertRecord] = []

    class Publisher:
        def publish(self, records: list[AlertRecord], timeout_s: float = 30.0) -> None:
            published.extend(records)

    settings = embedded_settings.model_copy(update={"services": embedded_settings.services.model_copy(
        update={"alerts_challenge_grace_s": 0.0})})
    assert alert_config(settings).challenge_grace_s == 0.0
    service = AlertService(settings, AlertEngine(alert_config(settings)), Publisher())  # type: ignore[arg-type]
    k = settings.kafka
    assert k.topic_audit in service.topics
    r = _result("u1", "line-1", "LOT", "pass", "none", 1_780_000_000 * S)
    service.handle([Msg(k.topic_results, dataclasses.replace(r, model_version=v, unit_id=f"u{v}").to_json(), int(v))  # type: ignore[list-item]
                    for v in ("1", "2", "3")])
    assert [(a.kind, a.state) for a in published if a.kind == "challenge_overdue"] == [("challenge_overdue", "active")]

    def audit(action: str, chain: str, value: str) -> Msg:
        rec = make_record(chain, 1, "0" * 64, AuditEvent(action, subject="line-1", new_value=value), datetime.now(UTC))
        return Msg(k.topic_audit, rec.to_json(), key=chain.encode())

    published.clear()
    service.handle([audit("challenge.run", "decisions/line-1/0", "passed"),  # not the system chain: skipped
                    audit("challenge.run", "system", "failed"), audit("recipe.activate", "system", "passed"),
                    Msg(k.topic_audit, b"not json", key=b"system")])  # type: ignore[list-item]
    assert published == []
    service.handle([audit("challenge.run", "system", "passed")])  # type: ignore[list-item]
    assert [(a.kind, a.state) for a in published] == [("challenge_overdue", "cleared")]

    # A changeover (recipe.activate, subject the line) and a deploy (model.deploy, subject the model:
    # every line it judges) make a challenge due at once, before the new judge's first unit.
    published.clear()
    service.handle([audit("recipe.activate", "system", "tablets@v3")])  # type: ignore[list-item]
    assert engine_due(service, "line-1").startswith("changeover to tablets@v3")
    service.handle([audit("challenge.run", "system", "passed")])  # type: ignore[list-item]
    assert engine_due(service, "line-1") == ""
    service.handle([audit("model.deploy", "system", "4")])  # type: ignore[list-item]
    assert engine_due(service, "line-1") == ""  # subject line-1 is no model this line runs
    deploy = make_record("system", 2, "0" * 64, AuditEvent("model.deploy", subject="tablet_classifier", new_value="4"),
                         datetime.now(UTC))
    service.handle([Msg(k.topic_audit, deploy.to_json(), key=b"system")])  # type: ignore[list-item]
    assert engine_due(service, "line-1") == "model.deploy of tablet_classifier to v4"
    service.handle([Msg(k.topic_results, dataclasses.replace(r, model_version="3", unit_id="u9").to_json(), 9)])  # type: ignore[list-item]
    assert [(a.kind, a.state) for a in published] == [("challenge_overdue", "active")]


def engine_due(service, line: str) -> str:  # noqa: ANN001
    """Why a challenge is due on `line` ('' when none is)."""
    st = service.engine.lines[line]
    return st.challenge_due_why if st.challenge_due_ns else ""
