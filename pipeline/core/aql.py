"""ISO 2859-1 (ANSI/ASQ Z1.4) single sampling plans for normal inspection: how many recovered units
a person samples, and how many defective ones in the sample reject the recovered lot.

Re-inspecting machine-removed units can become testing into compliance; a plant therefore
samples the units a person recovered (review decided good) and judges them with an attribute
plan from the recipe's inspection level and AQL. The standard's two tables are encoded as it
prints them: Table I (lot size and level -> sample size code letter) and the structure of
Table II-A (code letter and AQL -> sample size, Ac, Re, with its arrows followed to the first
plan below or above). Only the percent-nonconforming AQLs (0.010 to 10) are offered; when the
sample is as large as the lot, every unit is inspected (the standard's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("S-1", "S-2", "S-3", "S-4", "I", "II", "III")
LETTERS = "ABCDEFGHJKLMNPQR"
SAMPLE_SIZES = (2, 3, 5, 8, 13, 20, 32, 50, 80, 125, 200, 315, 500, 800, 1250, 2000)
AQLS = (0.010, 0.015, 0.025, 0.040, 0.065, 0.10, 0.15, 0.25, 0.40, 0.65, 1.0, 1.5, 2.5, 4.0, 6.5, 10.0)

# Table I: upper lot-size bound -> code letters for S-1, S-2, S-3, S-4, I, II, III.
_TABLE_I: tuple[tuple[int, str], ...] = (
    (8, "AAAAAAB"), (15, "AAAAABC"), (25, "AABBBCD"), (50, "ABBCCDE"), (90, "BBCCCEF"), (150, "BBCDDFG"),
    (280, "BCDEEGH"), (500, "BCDEFHJ"), (1200, "CCEFGJK"), (3200, "CDEGHKL"), (10000, "CDFGJLM"),
    (35000, "CDFHKMN"), (150000, "DEGJLNP"), (500000, "DEGJMPQ"), (10**18, "DEHKNQR"),
)
# Table II-A along a row, counted in AQL steps from the row's Ac 0 plan: 0 -> Ac 0, 1 -> arrow up,
# 2 -> arrow down, 3.. -> these acceptance numbers (Re = Ac + 1), beyond -> arrow up.
_ACCEPT_FROM_STEP_3 = (1, 2, 3, 5, 7, 10, 14, 21)


class SamplePlanError(ValueError):
    """A level, AQL or lot size the standard's tables do not cover."""


@dataclass(frozen=True)
class SamplePlan:
    """What a person inspects of a lot of `lot_size` recovered units, and how it is judged."""

    lot_size: int
    level: str
    aql: float
    code_letter: str  # Table I's letter for the lot; the plan may come from another row (arrows)
    plan_letter: str
    sample_size: int  # never more than the lot: 100 % inspection when the plan's sample would be
    accept: int  # Ac: at most this many defective units in the sample accept the lot
    reject: int  # Re: this many or more reject it

    def judge(self, defective: int) -> bool:
        """True when `defective` units found in the sample accept the recovered lot."""
        if defective < 0:
            raise SamplePlanError("a count of defective units cannot be negative")
        return defective <= self.accept

    def describe(self) -> str:
        return (f"ISO 2859-1 normal inspection, level {self.level}, AQL {self.aql:g} %: lot {self.lot_size}, "
                f"code letter {self.code_letter}, sample {self.sample_size} (plan {self.plan_letter}), "
                f"accept {self.accept}, reject {self.reject}")


def code_letter(lot_size: int, level: str) -> str:
    """Table I: the sample size code letter of a lot at an inspection level."""
    if level not in LEVELS:
        raise SamplePlanError(f"inspection level {level!r} is not one of {', '.join(LEVELS)}")
    if lot_size < 1:
        raise SamplePlanError(f"a lot of {lot_size} units has nothing to sample")
    for upper, letters in _TABLE_I:  # a lot of 1 reads the first row (and is inspected whole)
        if lot_size <= upper:
            return letters[LEVELS.index(level)]
    raise AssertionError("unreachable: Table I's last row is unbounded")


def _aql_index(aql: float) -> int:
    for j, value in enumerate(AQLS):
        if abs(value - aql) < 1e-9:
            return j
    raise SamplePlanError(f"AQL {aql:g} is not a preferred AQL of ISO 2859-1 ({', '.join(f'{a:g}' for a in AQLS)})")


def _row_plan(row: int, j: int) -> tuple[int, int]:
    """(row, Ac) of the plan that Table II-A gives for code-letter row `row` at AQL index `j`,
    following arrows down (larger samples) or up (smaller) to the first plan with numbers."""
    step = j - (len(AQLS) - 2 - row)  # the row's Ac 0 plan sits at AQL index 14 - row
    if step < 0 or step == 2:  # arrow down: the first row below with a plan in this column
        target = row + (-step if step < 0 else 1)
        if target >= len(LETTERS):
            raise SamplePlanError(f"no single sampling plan for AQL {AQLS[j]:g} at code letter {LETTERS[row]}")
        return _row_plan(target, j)
    if step == 0:
        return row, 0
    if step == 1:  # arrow up: the row above, where this column is its Ac 0 plan
        return _row_plan(row - 1, j)
    if step - 3 < len(_ACCEPT_FROM_STEP_3):
        return row, _ACCEPT_FROM_STEP_3[step - 3]
    return _row_plan(row - (step - 3 - len(_ACCEPT_FROM_STEP_3) + 1), j)  # arrow up to Ac 21


def sample_plan(lot_size: int, level: str, aql: float) -> SamplePlan:
    """The single sampling plan, normal inspection, for a lot of `lot_size` recovered units."""
    letter = code_letter(lot_size, level)
    row, accept = _row_plan(LETTERS.index(letter), _aql_index(aql))
    size = SAMPLE_SIZES[row]
    if size >= lot_size:  # the standard: a sample as large as the lot means every unit
        size = lot_size
    return SamplePlan(lot_size, level, aql, letter, LETTERS[row], size, accept, accept + 1)
