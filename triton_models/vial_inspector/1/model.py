"""Triton python-backend model `vial_inspector`: encoded frames + recipe parameters -> measurements.

Each request carries IMAGE [B, 1] (PNG/JPEG bytes) and PARAMS [B, 1] (UTF-8 JSON of
`pipeline.inspections.vial.VialParams`); the response carries RESULT [B, 1], the UTF-8 JSON of
each frame's `Measurement` (`pipeline.inspections.vial.measure_vial`). A frame that cannot be
measured (undecodable, no vial in view, invalid parameters) fails its own request with a message
naming the item and the reason; the other requests of the batch and the instance carry on.

`measure_request` does not touch `pb_utils`, which only exists inside Triton, so it is
unit-tested directly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

try:
    from pipeline.inspections.vial import VialParams, decode_frame, measure_vial
except ImportError:  # backend environment without the package installed: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from pipeline.inspections.vial import VialParams, decode_frame, measure_vial

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton (unit tests)
    pb_utils = None

IMAGE, PARAMS, RESULT = "IMAGE", "PARAMS", "RESULT"


def parse_params(raw: object) -> VialParams:
    """PARAMS item -> `VialParams`; ValueError naming every field that is wrong."""
    if not isinstance(raw, (bytes, bytearray)):
        raise ValueError(f"PARAMS must be UTF-8 JSON bytes, got {type(raw).__name__}")
    try:
        return VialParams.model_validate_json(bytes(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'PARAMS'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid vial PARAMS: {problems}") from None


def measure_request(images: np.ndarray, params: np.ndarray) -> np.ndarray:
    """All frames of one request -> RESULT object array [B, 1] of JSON bytes.

    Raises ValueError naming every item that cannot be measured, and why.
    """
    imgs = np.asarray(images, dtype=object).reshape(-1)
    prms = np.asarray(params, dtype=object).reshape(-1)
    if len(prms) not in (1, len(imgs)):
        raise ValueError(f"PARAMS has {len(prms)} item(s) for {len(imgs)} frame(s): send one per frame")
    out = np.empty((len(imgs), 1), dtype=object)
    parsed: dict[bytes, VialParams] = {}  # a batch usually shares one recipe: parse it once
    problems: list[str] = []
    for i, item in enumerate(imgs):
        raw = prms[i if len(prms) > 1 else 0]
        try:
            key = bytes(raw) if isinstance(raw, (bytes, bytearray)) else b""
            p = parsed.get(key) if key else None
            if p is None:
                p = parse_params(raw)
                parsed[key] = p
            out[i, 0] = measure_vial(decode_frame(item), p).to_json()
        except ValueError as exc:
            problems.append(f"item {i}: {exc}")
    if problems:
        raise ValueError(f"{len(problems)} of {len(imgs)} frame(s) not measured: " + "; ".join(problems))
    return out


class TritonPythonModel:
    """Triton entry points; all work is in `measure_request`."""

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy()
                params = pb_utils.get_input_tensor_by_name(request, PARAMS).as_numpy()
                result = measure_request(images, params)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(RESULT, result)]))
            except Exception as exc:  # fail this request only, never the instance
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"vial_inspector: {exc}")))
        return responses
