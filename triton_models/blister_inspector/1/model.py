"""Triton python-backend model `blister_inspector`: blister frames -> per-pocket measurements.

Each request carries IMAGE [B, 1] (PNG/JPEG bytes) and PARAMS [B, 1] (UTF-8 JSON of
`BlisterParams`, the recipe's blister section, one item per frame); the response carries
RESULT [B, 1]: UTF-8 JSON of `Measurement` (one `parts` entry per pocket). A frame that cannot be
measured (undecodable, no pack, grid not found, invalid parameters) fails its own request with a
message naming the item and the reason; the other requests of the batch and the model instance
carry on. The plumbing is `pipeline.inspections.serving`, shared by all measurement models.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from pipeline.inspections.blister import BlisterParams, measure_blister
    from pipeline.inspections.serving import IMAGE, PARAMS, RESULT, MeasurementModel
except ImportError:  # backend environment without the package installed: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from pipeline.inspections.blister import BlisterParams, measure_blister
    from pipeline.inspections.serving import IMAGE, PARAMS, RESULT, MeasurementModel

__all__ = ["IMAGE", "PARAMS", "RESULT", "TritonPythonModel", "measure_request"]


class TritonPythonModel(MeasurementModel):
    model_name = "blister_inspector"
    params_cls = BlisterParams
    measure = staticmethod(measure_blister)


measure_request = TritonPythonModel.measure_request
