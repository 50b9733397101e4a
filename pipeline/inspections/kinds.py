"""The inspection kinds a recipe can name, and one way to judge any of them.

`classifier` is the trained-model path of the tablets (docs/models.md: the verdict comes from
the judging version's own thresholds). The measurement kinds follow `pipeline.inspections.base`:
a Triton model measures, the recipe's parameters judge. Kinds are imported lazily so that a
worker that never sees a label does not import the barcode reader.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import date
from typing import Any

from pipeline.inspections.base import InspectionParams, Judgement, Measurement

CLASSIFIER = "classifier"


class ClassifierParams(InspectionParams):
    """A classifier takes no recipe parameters: its thresholds belong to the validated model
    version (a released version never changes; docs/models.md), so a recipe cannot loosen them."""


@dataclass(frozen=True)
class JudgeContext:
    """What a judge may know beyond the measurement: the batch being run and the day."""

    lot: str
    today: date


@dataclass(frozen=True)
class MeasurementKind:
    module: str
    params: str
    judge: str
    needs_context: bool = False

    def params_model(self) -> type[InspectionParams]:
        return getattr(importlib.import_module(self.module), self.params)

    def judge_fn(self) -> Any:
        return getattr(importlib.import_module(self.module), self.judge)


MEASUREMENT_KINDS: dict[str, MeasurementKind] = {
    "vial": MeasurementKind("pipeline.inspections.vial", "VialParams", "judge_vial"),
    "blister": MeasurementKind("pipeline.inspections.blister", "BlisterParams", "judge_blister"),
    "label": MeasurementKind("pipeline.inspections.label", "LabelParams", "judge_label", needs_context=True),
}
KINDS: tuple[str, ...] = (CLASSIFIER, *MEASUREMENT_KINDS)


def params_model(kind: str) -> type[InspectionParams]:
    """The recipe parameter schema of `kind`; ValueError naming the known kinds."""
    if kind == CLASSIFIER:
        return ClassifierParams
    if kind not in MEASUREMENT_KINDS:
        raise ValueError(f"unknown inspection kind {kind!r}; known kinds: {', '.join((CLASSIFIER, *MEASUREMENT_KINDS))}")
    return MEASUREMENT_KINDS[kind].params_model()


def judge(kind: str, measurement: Measurement, params: InspectionParams, ctx: JudgeContext) -> Judgement:
    """Apply a recipe's parameters to one measurement of a measurement kind."""
    spec = MEASUREMENT_KINDS[kind]
    fn = spec.judge_fn()
    if spec.needs_context:
        return fn(measurement, params, ctx.lot, ctx.today)
    return fn(measurement, params)
