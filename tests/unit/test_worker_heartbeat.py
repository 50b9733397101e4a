"""The worker's heartbeat reports Triton ready only while every model it routes to is ready, the
models inside its ensembles included: unloading the classifier must trip the watchdog."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.recipes.book import RecipeBook
from streams.app import models_ready, routed_models


class FakeTriton:
    """A server with the tablet ensemble (preprocess -> classifier) and a vial model."""

    def __init__(self) -> None:
        self.loaded = {"tablet_inspector", "tablet_preprocess", "tablet_classifier", "vial_inspector"}
        self.up = True

    async def is_server_ready(self) -> bool:
        return self.up

    async def is_model_ready(self, model_name: str) -> bool:
        return model_name in self.loaded

    async def get_model_config(self, model_name: str, as_json: bool = False) -> Any:
        steps = [{"model_name": "tablet_preprocess"}, {"model_name": "tablet_classifier"}]
        return {"config": {"ensemble_scheduling": {"step": steps}} if model_name == "tablet_inspector" else {}}


def test_heartbeat_goes_not_ready_when_a_routed_model_is_unloaded() -> None:
    triton = FakeTriton()
    routed = routed_models({"tablet-round-white-10mm": "tablet_inspector"}, RecipeBook())
    assert routed == {"tablet_inspector"}
    assert asyncio.run(models_ready(triton, routed))
    triton.loaded.discard("vial_inspector")  # not routed by this worker: still ready
    assert asyncio.run(models_ready(triton, routed))
    triton.loaded.discard("tablet_classifier")  # POST /v2/repository/models/tablet_classifier/unload
    assert not asyncio.run(models_ready(triton, routed))
    triton.loaded.add("tablet_classifier")
    triton.up = False
    assert not asyncio.run(models_ready(triton, routed))
