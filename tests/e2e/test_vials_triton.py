"""Smoke test of the `vial_inspector` python model in the embedded tritonserver: rendered frames
and recipe PARAMS in over gRPC, measurement JSON out; a bad frame fails only its own request."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.embedded.triton import TritonServer
from pipeline.imaging.vials import VIAL_PRODUCTS, render_vial
from pipeline.inspections.base import Measurement
from pipeline.inspections.vial import default_params, judge_vial
from pipeline.wire.codec import encode_png

VIAL = "vial-2r-clear-5ml"
MODEL = "vial_inspector"


def _infer(client: object, images: list[bytes], params: list[bytes]) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, items in (("IMAGE", images), ("PARAMS", params)):
        tensor = grpcclient.InferInput(name, [len(items), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(items, dtype=np.object_).reshape(-1, 1))
        inputs.append(tensor)
    result = client.infer(MODEL, inputs, outputs=[grpcclient.InferRequestedOutput("RESULT")])  # type: ignore[attr-defined]
    return result.as_numpy("RESULT")


def test_vial_inspector_measures_rendered_frames(triton_server: TritonServer) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    assert MODEL in triton_server.models, f"{MODEL} is not in the served repository"
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    assert client.is_model_ready(MODEL)
    params = default_params(VIAL_PRODUCTS[VIAL])
    raw_params = params.model_dump_json().encode()
    cases = [(0, None), (1, "low-fill"), (2, "missing-cap"), (3, "particles")]
    frames, truths = [], []
    for seed, defect in cases:
        img, truth = render_vial(np.random.default_rng(seed), VIAL, defect)
        frames.append(encode_png(img))
        truths.append(truth)

    out = _infer(client, frames, [raw_params] * len(frames))
    assert out.shape == (len(frames), 1)
    for (_, defect), truth, item in zip(cases, truths, out[:, 0], strict=True):
        m = Measurement.from_json(item)
        assert abs(m.values["fill_mm"] - truth["fill_mm"]) < 0.15  # type: ignore[operator]
        assert m.values["cap_present"] is truth["cap"] and m.values["particles"] == truth["particles"]
        assert judge_vial(m, params).defect == (defect or "none")

    with pytest.raises(InferenceServerException, match="vial_inspector: 1 of 2 frame.*item 1: not a decodable PNG/JPEG image"):
        _infer(client, [frames[0], b"garbage"], [raw_params] * 2)
    with pytest.raises(InferenceServerException, match="fill_tolerance_mm"):
        _infer(client, frames[:1], [raw_params.replace(b'"fill_tolerance_mm":1.0', b'"fill_tolerance_mm":-1.0')])
    # The instance survived both: the next request is measured.
    again = Measurement.from_json(_infer(client, frames[:1], [raw_params])[0, 0])
    assert abs(again.values["fill_mm"] - truths[0]["fill_mm"]) < 0.15  # type: ignore[operator]
