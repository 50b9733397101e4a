"""The served `blister_inspector`: rendered packs through the embedded tritonserver over gRPC."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.embedded.triton import TritonServer
from pipeline.imaging.blisters import render_blister
from pipeline.inspections.base import Measurement
from pipeline.inspections.blister import BlisterParams, judge_blister, measure_blister
from pipeline.wire.codec import decode_rgb, encode_png

MODEL = "blister_inspector"


def _infer(client: object, frames: list[bytes], params: list[bytes]) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    tensors = []
    for name, items in (("IMAGE", frames), ("PARAMS", params)):
        tensor = grpcclient.InferInput(name, [len(items), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(items, dtype=object).reshape(-1, 1))
        tensors.append(tensor)
    answer = client.infer(MODEL, tensors, outputs=[grpcclient.InferRequestedOutput("RESULT")])  # type: ignore[attr-defined]
    return answer.as_numpy("RESULT")


@pytest.mark.timeout(300)
def test_blister_inspector_measures_every_pocket(triton_server: TritonServer) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    assert client.is_model_ready(MODEL)
    params = BlisterParams()
    raw_params = params.model_dump_json().encode()
    frames = []
    for seed, pockets in (
        (1, [None] * 10),
        (2, [None, None, "empty-pocket", None, None, None, None, "foreign-tablet", None, None]),
    ):
        img, _ = render_blister(np.random.default_rng(seed), "blister-2x5-round-white", pockets)
        frames.append(encode_png(img))

    result = _infer(client, frames, [raw_params] * 2)
    assert result.shape == (2, 1)
    for frame, item in zip(frames, result[:, 0], strict=True):
        # The served model is the library function: same bytes in, same JSON out.
        assert item == measure_blister(decode_rgb(frame), params).to_json()
    good, bad = (judge_blister(Measurement.from_json(item), params) for item in result[:, 0])
    assert good.verdict == "pass" and good.measurements["pockets_ok"] == 10
    assert bad.verdict == "reject" and bad.defect == "empty-pocket"
    assert [(v.index, v.defect) for v in bad.parts if v.verdict == "reject"] == [(2, "empty-pocket"), (7, "foreign-tablet")]

    # An unmeasurable frame or invalid parameters fail their own request, with the reason...
    with pytest.raises(InferenceServerException, match="item 1: not a decodable PNG/JPEG image"):
        _infer(client, [frames[0], b"garbage"], [raw_params] * 2)
    with pytest.raises(InferenceServerException, match="invalid PARAMS: cols"):
        _infer(client, [frames[0]], [b'{"cols": 0}'])
    # ...and the instance keeps serving.
    again = _infer(client, [frames[1]], [raw_params])
    assert again[0, 0] == result[1, 0]
