"""Triton python-backend model `tablet_preprocess`: encoded frames -> classifier input.

Each request carries IMAGE [B, 1] (PNG/JPEG bytes); the response carries INPUT [B, 3, H, W]
made by `pipeline.model.preprocess.prepare_image`, the function training uses, at the geometry
this model's config declares (a product whose frames are not square gets its own copy of this
model with its classifier's geometry: docs/models.md, Input geometry). A frame that
cannot be decoded fails its own request with a message naming the item and the reason; the
other requests of the batch and the model instance carry on.

The per-request logic (`decode_request`, `input_hw`) does not touch `pb_utils`, which only
exists inside Triton, so it is unit-tested directly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

try:
    from pipeline.model.preprocess import MODEL_INPUT_SIZE, Size, hw, prepare_image
except ImportError:  # backend environment without the package installed: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from pipeline.model.preprocess import MODEL_INPUT_SIZE, Size, hw, prepare_image

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton (unit tests)
    pb_utils = None

OUTPUT_NAME = "INPUT"
INPUT_NAME = "IMAGE"


def input_hw(model_config: dict[str, Any]) -> tuple[int, int]:
    """(H, W) from this model's output dims [3, H, W]; ValueError naming what is wrong."""
    for out in model_config.get("output", []):
        if out.get("name") == OUTPUT_NAME:
            dims = [int(d) for d in out.get("dims", [])]
            if len(dims) != 3 or dims[0] != 3:
                raise ValueError(f"output {OUTPUT_NAME} dims must be [3, H, W], got {dims}")
            return hw((dims[1], dims[2]))
    raise ValueError(f"model config has no output named {OUTPUT_NAME}")


def decode_request(images: np.ndarray, size: Size = MODEL_INPUT_SIZE) -> np.ndarray:
    """All frames of one request -> float32 [B, 3, H, W] (`size`: S or (H, W)).

    Raises ValueError naming every item that is not decodable PNG/JPEG bytes.
    """
    items = np.asarray(images, dtype=object).reshape(-1)
    out = np.empty((len(items), 3, *hw(size)), dtype=np.float32)
    problems: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, (bytes, bytearray)):
            problems.append(f"item {i}: expected encoded image bytes, got {type(item).__name__}")
            continue
        try:
            out[i] = prepare_image(item, size)
        except ValueError as exc:
            problems.append(f"item {i}: {exc}")
    if problems:
        raise ValueError(f"{len(problems)} of {len(items)} frame(s) unusable: " + "; ".join(problems))
    return out


class TritonPythonModel:
    """Triton entry points; all work is in `decode_request`."""

    def initialize(self, args: dict[str, str]) -> None:
        self.size = input_hw(json.loads(args["model_config"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy()
                batch = decode_request(images, self.size)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_NAME, batch)]))
            except Exception as exc:  # fail this request only, never the instance
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"tablet_preprocess: {exc}"))
                )
        return responses
