"""Smoke test of `label_reader` served by the embedded Triton: rendered label frames in, the
Measurement JSON out, judged as the worker judges it; a frame that is not an image fails only
its own request."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from pipeline.embedded.triton import TritonServer
from pipeline.imaging.labels import LABEL_PRODUCTS, sample_label
from pipeline.inspections.base import Measurement
from pipeline.inspections.label import LabelParams, judge_label
from pipeline.wire.codec import encode_png

MODEL = "label_reader"
PRODUCT = "carton-label-gs1"
LOT = "L2611A07"


def _infer(client: object, frames: list[bytes], params: bytes) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    images = np.array([[f] for f in frames], dtype=np.object_)
    sections = np.array([[params]] * len(frames), dtype=np.object_)
    inputs = [grpcclient.InferInput("IMAGE", list(images.shape), "BYTES"),
              grpcclient.InferInput("PARAMS", list(sections.shape), "BYTES")]
    inputs[0].set_data_from_numpy(images)
    inputs[1].set_data_from_numpy(sections)
    answer = client.infer(MODEL, inputs, outputs=[grpcclient.InferRequestedOutput("RESULT")])  # type: ignore[attr-defined]
    return answer.as_numpy("RESULT")


def test_label_reader_served_by_triton(triton_server: TritonServer) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    assert MODEL in triton_server.models
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    assert client.is_model_ready(MODEL)
    today = date.today()  # the model anchors two-digit years on its own clock
    params = LabelParams(gtin=LABEL_PRODUCTS[PRODUCT].gtin)

    rng = np.random.default_rng(11)
    wanted = {None, "unreadable", "wrong-lot", "expired"}
    units = []
    seq = 1
    while wanted:
        img, defect, truth = sample_label(rng, PRODUCT, 0.8, LOT, seq, today)
        seq += 1
        if defect in wanted:
            wanted.discard(defect)
            units.append((encode_png(img), defect, truth))

    result = _infer(client, [u[0] for u in units], params.model_dump_json().encode())
    assert result.shape == (len(units), 1)
    for raw, (_, defect, truth) in zip(result[:, 0], units, strict=True):
        m = Measurement.from_json(raw)
        if defect == "unreadable":
            assert m.values["decoded"] is False
        else:
            assert m.values["symbology"] == "]d2"
            assert (m.values["gtin"], m.values["lot"], m.values["serial"]) == (truth.gtin, truth.lot, truth.serial)
            assert m.values["expiry"] == truth.expiry.isoformat()
        j = judge_label(m, params, LOT, today)
        assert (j.verdict, j.defect) == (("pass", "none") if defect is None else ("reject", defect))

    with pytest.raises(InferenceServerException, match="label_reader: 1 of 1 frame.*not a decodable PNG/JPEG"):
        _infer(client, [b"not an image"], params.model_dump_json().encode())
    with pytest.raises(InferenceServerException, match="label_reader: 1 of 1 frame.*item 0: invalid PARAMS: gtin"):
        _infer(client, [units[0][0]], b'{"gtin": "1"}')
    # The instance survived both failures.
    assert Measurement.from_json(_infer(client, [units[0][0]], params.model_dump_json().encode())[0, 0]).values["decoded"]
