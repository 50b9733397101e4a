"""Async gRPC client for the Triton inspection models.

A batch of frames travels as one request (Triton's dynamic batcher merges concurrent requests
further). When a batch fails, each frame is retried alone so that one corrupt image costs only
its own unit, which is then dead-lettered and fail-safe rejected by the caller.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from pipeline.settings import TritonSettings

log = logging.getLogger(__name__)

INPUT_NAME = "IMAGE"
SCORE_OUTPUT = "SCORE"
PROBS_OUTPUT = "CLASS_PROBS"


@dataclass(frozen=True)
class ModelInfo:
    """What a verdict needs to know about the model that produced a score."""

    name: str  # the ensemble the worker calls
    classifier: str  # the model inside it that carries the trained weights
    version: str  # classifier version that is serving
    classes: tuple[str, ...]
    threshold: float


@dataclass(frozen=True)
class Scored:
    score: float
    class_probs: dict[str, float]

    def defect_class(self, classes: tuple[str, ...]) -> str:
        """Most likely defect class (the 'good' class excluded)."""
        defects = {c: p for c, p in self.class_probs.items() if c != classes[0]}
        return max(defects, key=defects.__getitem__) if defects else "defect"


@dataclass(frozen=True)
class Failed:
    reason: str


Outcome = Scored | Failed


def _param(config: dict, key: str) -> str | None:
    value = config.get("parameters", {}).get(key)
    return value.get("string_value") if value else None


class TritonInspector:
    """Scores encoded images with an inspection ensemble served by Triton."""

    def __init__(self, settings: TritonSettings) -> None:
        if not settings.url:
            raise RuntimeError("Triton URL is not resolved (start the embedded stack first)")
        size = settings.max_grpc_message_bytes
        self._settings = settings
        self._client = InferenceServerClient(
            settings.url,
            channel_args=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
            ],
        )
        self._models: dict[str, ModelInfo] = {}

    async def close(self) -> None:
        await self._client.close()

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready())
        except InferenceServerException:
            return False

    async def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        """Resolve the classifier behind an ensemble, its live version, classes and threshold."""
        if model in self._models and not refresh:
            return self._models[model]
        config = (await self._client.get_model_config(model, as_json=True))["config"]
        steps = config.get("ensemble_scheduling", {}).get("step", [])
        classifier, classifier_config = model, config
        for step in steps:
            step_config = (await self._client.get_model_config(step["model_name"], as_json=True))["config"]
            if _param(step_config, "reject_threshold") is not None:
                classifier, classifier_config = step["model_name"], step_config
        threshold = _param(classifier_config, "reject_threshold")
        classes = _param(classifier_config, "classes")
        if threshold is None or classes is None:
            raise RuntimeError(f"model {model!r} declares no reject_threshold/classes parameters")
        metadata = await self._client.get_model_metadata(classifier, as_json=True)
        versions = sorted(metadata.get("versions", []), key=int)
        info = ModelInfo(
            name=model,
            classifier=classifier,
            version=versions[-1] if versions else "",
            classes=tuple(c.strip() for c in classes.split(",")),
            threshold=float(threshold),
        )
        self._models[model] = info
        return info

    async def warm_up(self, models: list[str], image: bytes) -> None:
        """Resolve each model and run one frame through it before the first real unit."""
        for model in models:
            await self.model_info(model)
            outcome = (await self.score(model, [image]))[0]
            if isinstance(outcome, Failed):
                raise RuntimeError(f"warm-up of {model!r} failed: {outcome.reason}")

    async def score(self, model: str, images: list[bytes]) -> list[Outcome]:
        """Score a batch; per-image failures come back as `Failed` with Triton's reason."""
        if not images:
            return []
        info = await self.model_info(model)
        try:
            return await self._infer(info, images)
        except InferenceServerException as exc:
            if len(images) == 1:
                return [Failed(f"triton: {exc.message() or exc}")]
            log.warning("batch of %d failed (%s); isolating frames", len(images), exc.message())
        singles = await asyncio.gather(
            *(self._infer_one(info, image) for image in images)
        )
        return list(singles)

    async def _infer_one(self, info: ModelInfo, image: bytes) -> Outcome:
        try:
            return (await self._infer(info, [image]))[0]
        except InferenceServerException as exc:
            return Failed(f"triton: {exc.message() or exc}")

    async def _infer(self, info: ModelInfo, images: list[bytes]) -> list[Outcome]:
        batch = np.array(images, dtype=np.object_).reshape(len(images), 1)
        tensor = InferInput(INPUT_NAME, list(batch.shape), "BYTES")
        tensor.set_data_from_numpy(batch)
        response = await self._client.infer(
            info.name,
            [tensor],
            outputs=[InferRequestedOutput(SCORE_OUTPUT), InferRequestedOutput(PROBS_OUTPUT)],
            client_timeout=self._settings.request_timeout_s,
        )
        scores = response.as_numpy(SCORE_OUTPUT).reshape(len(images))
        probs = response.as_numpy(PROBS_OUTPUT).reshape(len(images), -1)
        return [
            Scored(float(s), {c: float(p) for c, p in zip(info.classes, row, strict=True)})
            for s, row in zip(scores, probs, strict=True)
        ]
