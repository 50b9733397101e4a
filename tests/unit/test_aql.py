"""ISO 2859-1 single sampling, normal inspection: plans checked against the standard's printed
Tables I and II-A (values a QA person looks up by hand)."""

from __future__ import annotations

import pytest

from pipeline.core.aql import SamplePlanError, code_letter, sample_plan


@pytest.mark.parametrize(("lot", "level", "letter"), [
    (8, "II", "A"), (9, "II", "B"), (50, "II", "D"), (51, "II", "E"), (500, "II", "H"), (501, "II", "J"),
    (1200, "I", "G"), (3201, "III", "M"), (150000, "S-4", "J"), (10**6, "II", "Q"), (10**6, "III", "R"),
    (16, "S-3", "B"), (281, "S-1", "B"), (35001, "S-2", "E"),
])
def test_table_i_code_letters(lot: int, level: str, letter: str) -> None:
    assert code_letter(lot, level) == letter


@pytest.mark.parametrize(("lot", "level", "aql", "n", "ac"), [
    (1000, "II", 1.0, 80, 2),     # J, 1.0: 80 units, Ac 2 Re 3
    (3000, "II", 1.0, 125, 3),    # K, 1.0: 125, 3/4
    (3000, "II", 2.5, 125, 7),    # K, 2.5: 7/8
    (5000, "II", 1.0, 200, 5),    # L, 1.0: 5/6
    (20000, "II", 0.65, 315, 5),  # M, 0.65: 5/6
    (500, "II", 0.065, 200, 0),   # H at 0.065: arrow down to L, 0/1
    (500, "II", 0.40, 32, 0),     # H, 0.40: arrow up to G, 0/1
    (500, "II", 0.15, 80, 0),     # H, 0.15: arrow down to J, 0/1
    (300, "II", 1.0, 50, 1),      # H, 1.0: 1/2
    (200, "II", 1.0, 50, 1),      # G, 1.0: arrow down to H, 1/2
    (1200, "II", 10.0, 80, 14),   # J, 10: 14/15
    (3000, "II", 10.0, 125, 21),  # K, 10: 21/22
    (5000, "II", 10.0, 125, 21),  # L, 10: arrow up to K, 21/22
    (10**6, "II", 0.010, 1250, 0),  # Q, 0.010: 0/1
    (10**6, "III", 0.025, 2000, 1),  # R, 0.025: 1/2
])
def test_table_ii_a_plans(lot: int, level: str, aql: float, n: int, ac: int) -> None:
    plan = sample_plan(lot, level, aql)
    assert (plan.sample_size, plan.accept, plan.reject) == (n, ac, ac + 1), plan.describe()


def test_a_sample_as_large_as_the_lot_inspects_every_unit() -> None:
    plan = sample_plan(40, "II", 0.65)  # D, 0.65: arrow down to F (20 units): fewer than the lot
    assert (plan.code_letter, plan.plan_letter, plan.sample_size, plan.accept) == ("D", "F", 20, 0)
    whole = sample_plan(15, "II", 0.10)  # B, 0.10: arrow down to K (125): more than the 15 recovered units
    assert (whole.sample_size, whole.accept, whole.reject) == (15, 0, 1)
    assert plan.judge(0) and not plan.judge(1)


def test_refusals_name_what_the_tables_do_not_cover() -> None:
    with pytest.raises(SamplePlanError, match="inspection level 'IV'"):
        sample_plan(100, "IV", 1.0)
    with pytest.raises(SamplePlanError, match="AQL 0.3 is not a preferred AQL"):
        sample_plan(100, "II", 0.3)
    with pytest.raises(SamplePlanError, match="nothing to sample"):
        sample_plan(0, "II", 1.0)
    one = sample_plan(1, "II", 1.0)
    assert (one.sample_size, one.accept) == (1, 0)
    with pytest.raises(SamplePlanError, match="negative"):
        sample_plan(100, "II", 1.0).judge(-1)
