"""The Triton python-backend side of every measurement inspection (`pipeline.inspections.base`).

A measurement model (`triton_models/{vial_inspector,blister_inspector,label_reader}`) is the same
plumbing around one function ``measure(rgb, params) -> Measurement``: its ``model.py`` subclasses
`MeasurementModel` as ``TritonPythonModel`` and names its parameter model and that function.

Per request: IMAGE [B, 1] (PNG/JPEG bytes) and PARAMS [B, 1] (UTF-8 JSON of the recipe section)
with exactly one PARAMS item per IMAGE item (the worker sends the line's recipe with every
frame; a line sends the same bytes every frame, so parsing is cached). RESULT [B, 1] carries each
frame's `Measurement` JSON. A frame that cannot be measured (undecodable, invalid PARAMS, nothing
to measure in view) fails its own request with a message naming every such item and why; the
other requests of the batch and the model instance carry on.

`parse_params` and `measure_request` do not touch `triton_python_backend_utils`, which only
exists inside Triton (imported lazily in `MeasurementModel.execute`), so they are unit-tested
directly. The Triton image runs this on Python 3.10: no 3.11-only features here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import ValidationError

from pipeline.inspections.base import InspectionParams, Measurement, validation_problems
from pipeline.wire.codec import decode_rgb

IMAGE, PARAMS, RESULT = "IMAGE", "PARAMS", "RESULT"

P = TypeVar("P", bound=InspectionParams)
Measure = Callable[[np.ndarray, Any], Measurement]


@lru_cache(maxsize=64)
def parse_params(params_cls: type[P], raw: bytes) -> P:
    """One PARAMS item -> `params_cls`; ValueError naming every field that is wrong.

    Cached: the parameter models are frozen, so one parsed instance serves every frame."""
    try:
        return params_cls.model_validate_json(raw)
    except ValidationError as exc:
        raise ValueError(f"invalid PARAMS: {'; '.join(validation_problems(exc, whole='PARAMS'))}") from None


def measure_request(
    images: np.ndarray, params: np.ndarray, params_cls: type[P], measure: Callable[[np.ndarray, P], Measurement]
) -> np.ndarray:
    """All frames of one request -> RESULT object array [B, 1] of Measurement JSON bytes.

    `params` must hold exactly one item per `images` item. Raises ValueError naming every item
    that cannot be measured, and why.
    """
    items = np.asarray(images, dtype=object).reshape(-1)
    raw_params = np.asarray(params, dtype=object).reshape(-1)
    if len(raw_params) != len(items):
        raise ValueError(
            f"PARAMS has {len(raw_params)} item(s) for {len(items)} IMAGE item(s): send one per frame"
        )
    out = np.empty((len(items), 1), dtype=object)
    problems: list[str] = []
    for i, (item, raw) in enumerate(zip(items, raw_params, strict=True)):
        try:
            if isinstance(raw, str):
                raw = raw.encode()
            if not isinstance(raw, (bytes, bytearray)):
                raise ValueError(f"PARAMS must be UTF-8 JSON bytes, got {type(raw).__name__}")
            p = parse_params(params_cls, bytes(raw))
            out[i, 0] = measure(decode_rgb(item), p).to_json()
        except ValueError as exc:
            problems.append(f"item {i}: {exc}")
    if problems:
        raise ValueError(f"{len(problems)} of {len(items)} frame(s) not measured: " + "; ".join(problems))
    return out


class MeasurementModel:
    """Triton entry points of a measurement model; a ``model.py`` subclasses it as
    ``TritonPythonModel`` and sets `model_name`, `params_cls` and `measure` (a staticmethod)."""

    model_name: ClassVar[str]
    params_cls: ClassVar[type[InspectionParams]]
    measure: ClassVar[Measure]

    @classmethod
    def measure_request(cls, images: np.ndarray, params: np.ndarray) -> np.ndarray:
        """`measure_request` with this model's parameter model and measure function."""
        return measure_request(images, params, cls.params_cls, cls.measure)

    def initialize(self, args: dict[str, str]) -> None:
        """Called once per instance by Triton; nothing to load by default."""

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils  # exists only inside Triton

        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy()
                params = pb_utils.get_input_tensor_by_name(request, PARAMS).as_numpy()
                result = self.measure_request(images, params)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(RESULT, result)]))
            except Exception as exc:  # fail this request only, never the instance
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.model_name}: {exc}")))
        return responses
