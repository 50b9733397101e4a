"""Re-inspection control (issue 17): a machine reject is never decided, a review unit becomes good
only by a recorded decision (confirmed by QA where the recipe says so), a decided unit stays decided."""

from __future__ import annotations

import pytest

from pipeline.review.rules import (
    AWAITING_QA,
    CONFIRMED_DEFECTIVE,
    KEPT_REJECTED,
    RECOVERED,
    UNDECIDED,
    Decision,
    ReviewUnit,
    refusal,
    status,
)

CLASSES = ("crack", "chip")
REVIEW = ReviewUnit("u1", "LOT-1", "review")


def _refusal(unit: ReviewUnit | None, decision: str = "good", defect: str = "", role: str = "operator",
             lot: str = "LOT-1", qa: bool = False) -> str | None:
    return refusal(unit, "u1", lot, decision, defect, role, CLASSES, qa)


@pytest.mark.parametrize(("unit", "lot", "said"), [
    (None, "LOT-1", "has no stored verdict"),
    (ReviewUnit("u1", "LOT-2", "review"), "LOT-1", "belongs to lot 'LOT-2', not lot 'LOT-1'"),
    (ReviewUnit("u1", "LOT-1", "reject"), "LOT-1", "is a machine reject: it stays rejected"),
    (ReviewUnit("u1", "LOT-1", "pass"), "LOT-1", "was passed by the machine"),
    (ReviewUnit("u1", "LOT-1", "review", purpose="challenge"), "LOT-1", "is a challenge unit"),
])
def test_only_a_review_unit_of_the_lot_is_decided(unit: ReviewUnit | None, lot: str, said: str) -> None:
    reason = _refusal(unit, lot=lot)
    assert reason is not None and said in reason


def test_decisions_name_a_known_class_only_for_defects() -> None:
    assert _refusal(REVIEW, "defect", "crack") is None
    assert "not one of crack, chip" in str(_refusal(REVIEW, "defect", "scratch"))
    assert "only a defect decision names" in str(_refusal(REVIEW, "good", "crack"))
    assert "not one of good, defect, cannot_decide" in str(_refusal(REVIEW, "maybe"))
    assert "role 'viewer' may not decide" in str(_refusal(REVIEW, role="viewer"))


def test_what_decisions_amount_to_and_that_decided_units_stay_decided() -> None:
    good_op = Decision("good", "", "otto", "operator")
    assert status(REVIEW, qa_confirms=False) == UNDECIDED
    recovered = ReviewUnit("u1", "LOT-1", "review", decisions=(good_op,))
    assert status(recovered, qa_confirms=False) == RECOVERED
    assert "already decided (recovered by otto, operator)" in str(_refusal(recovered, "defect", "crack"))
    # Where QA confirms: the operator's good is pending; only QA acts on it next.
    assert status(recovered, qa_confirms=True) == AWAITING_QA
    assert "QA confirms it" in str(_refusal(recovered, role="operator", qa=True))
    assert _refusal(recovered, role="qa", qa=True) is None
    confirmed = ReviewUnit("u1", "LOT-1", "review", decisions=(good_op, Decision("good", "", "quinn", "qa")))
    assert status(confirmed, qa_confirms=True) == RECOVERED
    overruled = ReviewUnit("u1", "LOT-1", "review", decisions=(good_op, Decision("defect", "chip", "quinn", "qa")))
    assert status(overruled, qa_confirms=True) == CONFIRMED_DEFECTIVE
    unsure = ReviewUnit("u1", "LOT-1", "review", decisions=(Decision("cannot_decide", "", "otto", "operator"),))
    assert status(unsure, qa_confirms=False) == KEPT_REJECTED
    assert "already decided (kept_rejected" in str(_refusal(unsure))


def test_recipe_review_table_defaults_and_refusals() -> None:
    import tomllib

    from pipeline.core.aql import sample_plan
    from pipeline.recipes.schema import RecipeError, parse_recipe
    from pipeline.settings import PROJECT_ROOT

    data = tomllib.loads((PROJECT_ROOT / "recipes" / "tablet-round-white-10mm.toml").read_text())
    plain = parse_recipe(data)
    assert (plain.review.max_review_fraction, plain.review.qa_confirms, plain.review.aql_level,
            plain.review.aql) == (0.02, False, "II", 0.65)
    strict = parse_recipe({**data, "review": {"qa_confirms": True, "aql": 1.0, "aql_level": "I"}})
    assert strict.sha256 != plain.sha256 and strict.review.qa_confirms
    assert sample_plan(1000, strict.review.aql_level, strict.review.aql).sample_size == 50  # G, 1.0: arrow to H
    with pytest.raises(RecipeError) as refused:
        parse_recipe({**data, "review": {"aql": 0.3, "aql_level": "IV", "max_review_fraction": 0, "x": 1}})
    text = str(refused.value)
    for key in ("review.aql:", "review.aql_level:", "review.max_review_fraction:", "review.x"):
        assert key in text, key
