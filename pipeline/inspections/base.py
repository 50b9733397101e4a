"""The contract every measurement inspection follows.

Measurement (what is in the image) and judgement (is that within the recipe's tolerances) are
kept apart on purpose: the measurement runs inside Triton as a versioned model, the judgement
runs in the worker against the line's active recipe, so a tolerance change is a recipe change,
never a model change. Triton models of this contract take

- ``IMAGE``  [B, 1] BYTES: the encoded frame (PNG/JPEG);
- ``PARAMS`` [B, 1] BYTES: UTF-8 JSON of the recipe's inspection parameters (`InspectionParams`),
  exactly one item per IMAGE item;

and return ``RESULT`` [B, 1] BYTES: UTF-8 JSON of the measurement (`Measurement.to_json`).
A frame that cannot be measured fails its own request with the reason (the worker then
dead-letters it and fail-safe rejects the unit). `pipeline.inspections.serving` implements this
once for every measurement model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.wire.messages import Verdict

Value = float | int | str | bool


class InspectionParams(BaseModel):
    """Base of every inspection's recipe section: unknown keys are refused (a typo is an error,
    never a silently ignored tolerance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validation_problems(exc: ValidationError, prefix: str = "", whole: str = "(recipe)") -> list[str]:
    """One ``where: what`` line per problem of a pydantic validation (recipes, PARAMS): ``where``
    is the key path (``inspection[0].params.fill_tolerance_mm``; `whole` for the object itself),
    an unknown key says so."""
    problems = []
    for err in exc.errors():
        where = ""
        for part in err["loc"]:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        where = f"{prefix}.{where}" if prefix and where else (prefix or where or whole)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {msg}")
    return problems


@dataclass(frozen=True)
class Measurement:
    """What a measurement model saw in one frame. `values` are flat numbers/flags (fill_mm,
    stopper_present, ...); `parts` are per-sub-unit records (blister pockets) with an `index`."""

    values: dict[str, Value] = field(default_factory=dict)
    parts: list[dict[str, Value]] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Measurement:
        doc: Any = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("values", {}), dict) or not isinstance(
            doc.get("parts", []), list
        ):
            raise ValueError("measurement must be a JSON object with 'values' (object) and 'parts' (list)")
        return cls(values=dict(doc.get("values", {})), parts=[dict(p) for p in doc.get("parts", [])])


@dataclass(frozen=True)
class PartVerdict:
    """The verdict of one sub-unit of a frame (a blister pocket), by its index."""

    index: int
    verdict: Verdict
    defect: str  # "none" when it passes
    reason: str = ""


@dataclass(frozen=True)
class Judgement:
    """A recipe's decision on one measurement.

    `verdict` is the unit's (a blister pack is rejected when any pocket is); `defect` the first
    failing check's class (``none`` on pass); `reasons` one human-readable line per failing check
    (measured value and the tolerance it broke); `measurements` the numbers every result carries
    (pass or not); `parts` per-pocket verdicts; `flags` facts for the record that are not by
    themselves a reject (e.g. the decoded serial number).
    """

    verdict: Verdict
    defect: str
    reasons: list[str] = field(default_factory=list)
    measurements: dict[str, Value] = field(default_factory=dict)
    parts: list[PartVerdict] = field(default_factory=list)
    flags: dict[str, str] = field(default_factory=dict)
