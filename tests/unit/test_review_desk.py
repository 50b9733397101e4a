"""The review desk against the real analytics store (chDB) and audit trail: a lot's review units
as a person sees them, e-signed decisions stored twice (audit trail and review_decisions), every
refusal audited, QA confirmation, and the ISO 2859-1 sample of the recovered units deciding
whether the lot's review still refuses its release."""

from __future__ import annotations

import re

import pytest
from review_lot import ADAM, LOT, OTTO, PASSWORDS, QUINN, review_desk
from review_lot import frame_jpeg as lot_frame

from pipeline.audit.record import SIGN_ACTION
from pipeline.auth.guard import AccessDenied
from pipeline.clickhouse import ChdbClient
from pipeline.recipes.schema import ReviewSpec
from pipeline.review.desk import ReviewDesk, ReviewRefused
from pipeline.review.rules import AWAITING_QA, CONFIRMED_DEFECTIVE, KEPT_REJECTED, RECOVERED, UNDECIDED
from pipeline.review.store import find_unit, frame_jpeg, lot_queue, summarize
from pipeline.settings import Settings


@pytest.fixture()
def desk(embedded_settings: Settings, chdb_client: ChdbClient) -> tuple[ReviewDesk, Settings]:
    return review_desk(embedded_settings, chdb_client, "review")


def _refusals(desk: ReviewDesk) -> list[str]:
    rows = desk.client.query(
        f"SELECT reason FROM {desk.db}.audit_records WHERE action = 'access.refused' ORDER BY seq").rows
    return [str(r[0]) for r in rows]


def test_the_queue_shows_each_review_unit_with_every_station(desk: tuple[ReviewDesk, Settings]) -> None:
    d, _ = desk
    queue = lot_queue(d.client, d.db, LOT)
    assert [u.unit.unit_id for u in queue] == ["u2", "u4", "m1"]  # not the pass, the reject or the other lot's unit
    m1 = queue[2]
    assert [(s.station, s.verdict, s.has_frame) for s in m1.stations] == [("bottom", "pass", True),  # on the broker
                                                                           ("top", "review", True)]
    assert queue[0].classes() == ["chip", "crack"] and queue[0].stations[0].class_scores["crack"] == pytest.approx(0.42)
    assert frame_jpeg(d.client, d.db, "m1", "top") == lot_frame("chip", 9)
    assert frame_jpeg(d.client, d.db, "m1", "bottom") is None
    assert queue[0].to_json(qa_confirms=False)["status"] == UNDECIDED


def test_decisions_are_signed_stored_and_refusals_audited(desk: tuple[ReviewDesk, Settings]) -> None:
    d, _ = desk
    done = d.decide(OTTO, PASSWORDS["otto"], LOT, "u2", "good", seconds_spent=12.5, comment="glare on the score line")
    assert done.record.action == "review.decide" and done.record.new_value == "good"
    assert done.signature.action == SIGN_ACTION and done.signature.detail_dict()["signed_hash"] == done.record.record_hash
    assert done.signature.new_value == "reviewed"
    row = d.client.query(f"SELECT decision, user, seconds_spent, machine_defect, audit_record, signature "
                         f"FROM {d.db}.review_decisions FINAL WHERE unit_id = 'u2'").rows
    assert [tuple(r) for r in row] == [("good", "otto", 12.5, "crack", done.record.record_id, done.signature.record_id)]

    refused = [
        (OTTO, "wrong", "u4", LOT, "good", "", "wrong password"),
        (OTTO, PASSWORDS["otto"], "u3", LOT, "good", "", "is a machine reject: it stays rejected"),
        (OTTO, PASSWORDS["otto"], "v1", LOT, "good", "", "belongs to lot 'LOT-R-2'"),
        (OTTO, PASSWORDS["otto"], "u2", LOT, "defect", "crack", "already decided (recovered by otto"),
        (OTTO, PASSWORDS["otto"], "u4", LOT, "defect", "scratch", "'scratch' is not one of chip, crack"),
        (ADAM, PASSWORDS["adam"], "u4", LOT, "good", "", "may not review.decide"),
        (OTTO, PASSWORDS["quinn"], "u4", LOT, "good", "", "wrong password"),  # another person's password
        (OTTO, PASSWORDS["otto"], "nope", LOT, "good", "", "has no stored verdict"),
    ]
    for who, password, unit, lot, decision, defect, said in refused:
        with pytest.raises(AccessDenied, match=re.escape(said)):
            d.decide(who, password, lot, unit, decision, defect)
    audited = _refusals(d)
    assert len(audited) == len(refused) and all(said in a for a, (*_, said) in zip(audited, refused, strict=True))
    stored = d.client.query(f"SELECT count() FROM {d.db}.review_decisions").scalar()
    assert int(stored) == 1  # nothing refused was stored

    d.decide(QUINN, PASSWORDS["quinn"], LOT, "u4", "defect", "chip")
    statuses = {u.unit.unit_id: u.to_json(False)["status"] for u in lot_queue(d.client, d.db, LOT)}
    assert statuses == {"u2": RECOVERED, "u4": CONFIRMED_DEFECTIVE, "m1": UNDECIDED}


def test_release_needs_every_unit_decided_and_the_recovered_sample_accepted(desk: tuple[ReviewDesk, Settings]) -> None:
    d, _ = desk
    spec = ReviewSpec(max_review_fraction=0.05, aql=1.0)

    def summary():  # noqa: ANN202
        return summarize(d.client, d.db, LOT, spec)

    first = summary()
    assert (first.units, first.review_units, first.undecided) == (6, 3, 3)
    assert first.over_limit and first.review_fraction == pytest.approx(0.5)
    assert first.release_refusals() == ["3 review unit(s) undecided"]
    d.decide(OTTO, PASSWORDS["otto"], LOT, "u2", "good")
    d.decide(OTTO, PASSWORDS["otto"], LOT, "u4", "good")
    with pytest.raises(ReviewRefused, match="still has 1 undecided"):
        d.record_sample(QUINN, PASSWORDS["quinn"], LOT, 0, spec)
    d.decide(OTTO, PASSWORDS["otto"], LOT, "m1", "cannot_decide")
    decided = summary()
    assert decided.counts[RECOVERED] == 2 and decided.counts[KEPT_REJECTED] == 1 and decided.undecided == 0
    assert decided.plan is not None and (decided.plan.sample_size, decided.plan.accept) == (2, 0)
    assert decided.release_refusals() == ["2 recovered unit(s) not sampled (ISO 2859-1)"]
    with pytest.raises(AccessDenied, match="may not review.sample"):
        d.record_sample(OTTO, PASSWORDS["otto"], LOT, 0, spec)
    with pytest.raises(ReviewRefused, match="3 defective units in a sample of 2"):
        d.record_sample(QUINN, PASSWORDS["quinn"], LOT, 3, spec)
    failed, after = d.record_sample(QUINN, PASSWORDS["quinn"], LOT, 1, spec)
    assert failed.record.new_value == "rejected"
    assert after.release_refusals() == ["the sample of recovered units failed (1 defective, accept 0)"]
    passed, after = d.record_sample(QUINN, PASSWORDS["quinn"], LOT, 0, spec, comment="re-sampled after re-sorting")
    assert passed.signature.new_value == "approved" and after.release_refusals() == []


def test_qa_confirms_an_operators_good_where_the_recipe_says_so(desk: tuple[ReviewDesk, Settings]) -> None:
    d, _ = desk
    d.review_spec = lambda ref: ReviewSpec(qa_confirms=True)
    d.decide(OTTO, PASSWORDS["otto"], LOT, "u2", "good")
    unit = find_unit(d.client, d.db, "u2")
    assert unit is not None and unit.to_json(qa_confirms=True)["status"] == AWAITING_QA
    with pytest.raises(ReviewRefused, match="QA confirms it"):
        d.decide(OTTO, PASSWORDS["otto"], LOT, "u2", "good")
    confirmed = d.decide(QUINN, PASSWORDS["quinn"], LOT, "u2", "good")
    assert confirmed.signature.new_value == "approved"
    unit = find_unit(d.client, d.db, "u2")
    assert unit is not None and unit.to_json(qa_confirms=True)["status"] == RECOVERED
    assert [x["user"] for x in unit.decided] == ["otto", "quinn"]
