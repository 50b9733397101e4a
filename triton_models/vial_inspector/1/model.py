"""Triton python-backend model `vial_inspector`: encoded frames + recipe parameters -> measurements.

Each request carries IMAGE [B, 1] (PNG/JPEG bytes) and PARAMS [B, 1] (UTF-8 JSON of
`pipeline.inspections.vial.VialParams`, one item per frame); the response carries RESULT [B, 1],
the UTF-8 JSON of each frame's `Measurement` (`pipeline.inspections.vial.measure_vial`). A frame
that cannot be measured (undecodable, no vial in view, invalid parameters) fails its own request
with a message naming the item and the reason; the other requests of the batch and the instance
carry on. The plumbing is `pipeline.inspections.serving`, shared by all measurement models.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from pipeline.inspections.serving import IMAGE, PARAMS, RESULT, MeasurementModel
    from pipeline.inspections.vial import VialParams, measure_vial
except ImportError:  # backend environment without the package installed: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from pipeline.inspections.serving import IMAGE, PARAMS, RESULT, MeasurementModel
    from pipeline.inspections.vial import VialParams, measure_vial

__all__ = ["IMAGE", "PARAMS", "RESULT", "TritonPythonModel", "measure_request"]


class TritonPythonModel(MeasurementModel):
    model_name = "vial_inspector"
    params_cls = VialParams
    measure = staticmethod(measure_vial)


measure_request = TritonPythonModel.measure_request
