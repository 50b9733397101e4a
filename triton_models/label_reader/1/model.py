"""Triton python-backend model `label_reader`: label frames -> GS1 DataMatrix measurements.

Each request carries IMAGE [B, 1] (PNG/JPEG bytes) and PARAMS [B, 1] (UTF-8 JSON of the
recipe's `LabelParams`, one item per frame); the response carries RESULT [B, 1], the UTF-8 JSON
of each frame's `Measurement` from `pipeline.inspections.label.read_label_frame`. A frame that is
not an image or PARAMS that are not a label section fail their own request with a message naming
the item and the reason; the other requests and the model instance carry on. An unreadable code
is not an error: it is measured as ``decoded: false`` and rejected by the judge. The plumbing is
`pipeline.inspections.serving`, shared by all measurement models.
"""

from __future__ import annotations

import sys
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np

try:
    from pipeline.inspections import serving
    from pipeline.inspections.label import LabelParams, read_label_frame
except ImportError:  # backend environment without the package installed: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from pipeline.inspections import serving
    from pipeline.inspections.label import LabelParams, read_label_frame

IMAGE, PARAMS, RESULT = serving.IMAGE, serving.PARAMS, serving.RESULT


class TritonPythonModel(serving.MeasurementModel):
    model_name = "label_reader"
    params_cls = LabelParams
    measure = staticmethod(read_label_frame)  # today: the system date anchors two-digit years

    def initialize(self, args: dict[str, str]) -> None:
        import zxingcpp  # noqa: F401  fail the load, not the first request, if the reader is missing


def measure_request(images: np.ndarray, params: np.ndarray, today: date | None = None) -> np.ndarray:
    """`serving.measure_request` of this model; `today` anchors two-digit years (default: system date)."""
    return serving.measure_request(images, params, LabelParams, partial(read_label_frame, today=today))
