"""The input-space check through the real embedded Triton: the worker's processor reads the live
version's reference from the served classifier config; an oval tablet on the round tablet's
line is sent to a person with the reason, round tablets are judged by the model as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import LIVE_TABLET_MODEL

from pipeline.embedded.triton import TritonServer
from pipeline.imaging.tablets import render_tablet
from pipeline.settings import Settings
from pipeline.wire.codec import encode_png
from pipeline.wire.messages import FrameMeta
from streams.processor import INPUT_SPACE_DEFECT, Frame, InspectionProcessor
from streams.triton_client import TritonInspector

ROUND, OVAL = "tablet-round-white-10mm", "tablet-oval-yellow-14mm"


@pytest.mark.skipif(not LIVE_TABLET_MODEL.exists(), reason="tablet model not trained (make model)")
async def test_oval_tablet_on_the_round_line_goes_to_review(embedded_settings: Settings,
                                                            triton_server: TritonServer) -> None:
    settings = embedded_settings.model_copy(
        update={"triton": embedded_settings.triton.model_copy(update={"url": triton_server.grpc_url})})
    units = [(f"round-{i}", ROUND, render_tablet(np.random.default_rng([31, 0, i]), ROUND, None)) for i in range(6)]
    units += [(f"oval-{i}", OVAL, render_tablet(np.random.default_rng([31, 1, i]), OVAL, None)) for i in range(4)]
    frames = [
        # Every frame claims the round tablet: the line makes it; the oval ones are a mix-up.
        Frame(unit.encode(), encode_png(img), FrameMeta(unit, "line-1", "cam-1", ROUND, 1_000, "image/png",
                                                        "LOT-OOD").to_headers(), "frames", 0, i, 2_000)
        for i, (unit, _, img) in enumerate(units)
    ]
    inspector = TritonInspector(settings.triton)
    try:
        out = await InspectionProcessor(settings, inspector, worker="w-ood").process(frames)
    finally:
        await inspector.close()
    results = {json.loads(o.value)["unit_id"]: json.loads(o.value)
               for o in out if o.topic == settings.kafka.topic_results}
    assert len(results) == len(units)

    for unit, product, _ in units:
        r = results[unit]
        assert r["cause"] == "model" and r["inspected"], r
        if product == ROUND:
            assert r["measurements"]["input_space"] == "in", r
            assert r["defect"] != INPUT_SPACE_DEFECT
        else:
            assert r["verdict"] in ("review", "reject"), r  # never pass
            assert any(x.startswith("input space: elongation") and "tablet_classifier v" in x
                       for x in r["reasons"]), r
            assert r["measurements"]["input_space"].startswith("input space: ")
    # Good round tablets pass as before (the model may send a rare good unit to review).
    assert sum(results[u]["verdict"] == "pass" for u, p, _ in units if p == ROUND) >= 5
