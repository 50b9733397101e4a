"""Triton python-backend model `blister_inspector`: blister frames -> per-pocket measurements.

Each request carries IMAGE [B, 1] (PNG/JPEG bytes) and PARAMS [B, 1] (UTF-8 JSON of
`BlisterParams`, the recipe's blister section); the response carries RESULT [B, 1]: UTF-8 JSON of
`Measurement` (one `parts` entry per pocket). A frame that cannot be measured (undecodable, no
pack, grid not found, invalid parameters) fails its own request with a message naming the item
and the reason; the other requests of the batch and the model instance carry on.

`measure_request` does not touch `pb_utils`, which only exists inside Triton, so it is
unit-tested directly.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

try:
    from pipeline.inspections.blister import BlisterParams, decode_rgb, measure_blister
except ImportError:  # backend environment without the package installed: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from pipeline.inspections.blister import BlisterParams, decode_rgb, measure_blister

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton (unit tests)
    pb_utils = None

MODEL = "blister_inspector"


@lru_cache(maxsize=32)
def parse_params(raw: bytes) -> BlisterParams:
    """The recipe's parameters from PARAMS JSON (a line sends the same bytes every frame: cached)."""
    try:
        return BlisterParams.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid PARAMS: {problems}") from None


def measure_request(images: np.ndarray, params: np.ndarray) -> np.ndarray:
    """All items of one request -> RESULT [B, 1] object array of JSON bytes.

    Raises ValueError naming every item that cannot be measured, with its reason.
    """
    items = np.asarray(images, dtype=object).reshape(-1)
    raw_params = np.asarray(params, dtype=object).reshape(-1)
    if len(raw_params) != len(items):
        raise ValueError(f"PARAMS has {len(raw_params)} item(s) but IMAGE has {len(items)}")
    out = np.empty((len(items), 1), dtype=object)
    problems: list[str] = []
    for i, (item, raw) in enumerate(zip(items, raw_params, strict=True)):
        try:
            if not isinstance(raw, (bytes, bytearray)):
                raise ValueError(f"PARAMS must be JSON bytes, got {type(raw).__name__}")
            rgb = decode_rgb(item)
            out[i, 0] = measure_blister(rgb, parse_params(bytes(raw))).to_json()
        except ValueError as exc:
            problems.append(f"item {i}: {exc}")
    if problems:
        raise ValueError(f"{len(problems)} of {len(items)} frame(s) not measured: " + "; ".join(problems))
    return out


class TritonPythonModel:
    """Triton entry points; all work is in `measure_request`."""

    def initialize(self, args: dict[str, str]) -> None:
        pass

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
                params = pb_utils.get_input_tensor_by_name(request, "PARAMS").as_numpy()
                result = measure_request(images, params)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("RESULT", result)]))
            except Exception as exc:  # fail this request only, never the instance
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{MODEL}: {exc}")))
        return responses
