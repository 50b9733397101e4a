"""Triton python-backend model `label_reader`: label frames -> GS1 DataMatrix measurements.

Each request carries IMAGE [B, 1] (PNG/JPEG bytes) and PARAMS [B, 1] (UTF-8 JSON of the
recipe's `LabelParams`); the response carries RESULT [B, 1], the UTF-8 JSON of each frame's
`Measurement` from `pipeline.inspections.label.read_label_bytes`. A frame that is not an image
or PARAMS that are not a label section fail their own request with a message naming the item
and the reason; the other requests and the model instance carry on. An unreadable code is not
an error: it is measured as ``decoded: false`` and rejected by the judge.

The per-request logic (`measure_request`) does not touch `pb_utils`, which only exists inside
Triton, so it is unit-tested directly.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

try:
    from pipeline.inspections.label import read_label_bytes
except ImportError:  # backend environment without the package installed: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from pipeline.inspections.label import read_label_bytes

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton (unit tests)
    pb_utils = None

IMAGE = "IMAGE"
PARAMS = "PARAMS"
RESULT = "RESULT"


def measure_request(images: np.ndarray, params: np.ndarray, today: date | None = None) -> np.ndarray:
    """All frames of one request -> RESULT object array [B, 1] of Measurement JSON bytes.

    Raises ValueError naming every item that cannot be measured (not an image, bad PARAMS).
    """
    frames = np.asarray(images, dtype=object).reshape(-1)
    sections = np.asarray(params, dtype=object).reshape(-1)
    if len(frames) != len(sections):
        raise ValueError(f"{len(frames)} IMAGE item(s) but {len(sections)} PARAMS item(s)")
    out = np.empty((len(frames), 1), dtype=object)
    problems: list[str] = []
    for i, (frame, section) in enumerate(zip(frames, sections, strict=True)):
        if not isinstance(frame, (bytes, bytearray)):
            problems.append(f"item {i}: IMAGE must be encoded image bytes, got {type(frame).__name__}")
            continue
        if not isinstance(section, (bytes, bytearray, str)):
            problems.append(f"item {i}: PARAMS must be JSON bytes, got {type(section).__name__}")
            continue
        try:
            out[i, 0] = read_label_bytes(bytes(frame), section, today).to_json()
        except ValueError as exc:
            problems.append(f"item {i}: {exc}")
    if problems:
        raise ValueError(f"{len(problems)} of {len(frames)} frame(s) unusable: " + "; ".join(problems))
    return out


class TritonPythonModel:
    """Triton entry points; all work is in `measure_request`."""

    def initialize(self, args: dict[str, str]) -> None:
        import zxingcpp  # noqa: F401  fail the load, not the first request, if the reader is missing

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy()
                params = pb_utils.get_input_tensor_by_name(request, PARAMS).as_numpy()
                result = measure_request(images, params)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(RESULT, result)]))
            except Exception as exc:  # fail this request only, never the instance
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"label_reader: {exc}")))
        return responses
