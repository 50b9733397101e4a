"""What a shadow deployment publishes: one candidate verdict per unit (docs/models.md).

Kept apart from `InspectionResult` on purpose: nothing that acts on the line (actuator, gate,
reject images, audit decision records) consumes this topic, so a shadow verdict can never become
a live one. The sink stores it in ``shadow_inspections``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.wire.messages import JsonMessage

# "failed": the candidate could not score the frame (its reason in `error`); never a live verdict.
ShadowVerdictValue = Literal["pass", "review", "reject", "failed"]


@dataclass(frozen=True)
class ShadowVerdict(JsonMessage):
    """One unit (one station frame) judged by a candidate version at its own thresholds."""

    unit_id: str
    line: str
    camera: str
    station: str
    product: str
    lot: str
    verdict: ShadowVerdictValue
    defect: str  # the candidate's most likely defect class; "none" on pass
    score: float | None
    review_threshold: float | None
    reject_threshold: float | None
    model_name: str  # the classifier (its repository name; served as `<name>__shadow`)
    model_version: int  # the candidate version
    live_version: int | None  # the classifier's live version when the shadow started
    capture_ns: int
    scored_ns: int
    shadow_id: str  # one shadow run (start time and host), to tell runs apart
    error: str = ""
