"""Async gRPC client for the Triton inspection models.

A batch of frames travels as one request (Triton's dynamic batcher merges concurrent requests
further). When a batch fails, each frame is retried alone so that one corrupt image costs only
its own unit, which is then dead-lettered and fail-safe rejected by the caller.

Every classifier version outputs, per row, its score, class probabilities, its own thresholds
``[review, reject]`` and its version number (docs/models.md). The verdict is taken from the
row's own thresholds, so a deploy or rollback in the middle of a batch can never pair one
version's scores with another's thresholds, and every result names the version that judged it.
Class names per version come from the classifier config's ``classes`` parameter, and each
version's input-space reference (pipeline.model.input_space) from its ``input_space`` parameter;
the config is fetched again when a version not seen before answers (a deploy happened).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from pipeline.inspections.base import Measurement
from pipeline.model.input_space import PARAM as INPUT_SPACE_PARAM
from pipeline.model.input_space import Reference, parse_param
from pipeline.model.repository import CLASSES_PARAM
from pipeline.settings import TritonSettings
from pipeline.wire.messages import Verdict
from streams.replicas import Replicas

log = logging.getLogger(__name__)

INPUT_NAME = "IMAGE"
PARAMS_INPUT = "PARAMS"
RESULT_OUTPUT = "RESULT"
SCORE_OUTPUT = "SCORE"
PROBS_OUTPUT = "CLASS_PROBS"
THRESHOLDS_OUTPUT = "THRESHOLDS"
VERSION_OUTPUT = "MODEL_VERSION"
OUTPUTS = (SCORE_OUTPUT, PROBS_OUTPUT, THRESHOLDS_OUTPUT, VERSION_OUTPUT)
_R = TypeVar("_R")
# How long "this model does not exist" is believed before Triton is asked again.
UNKNOWN_MODEL_TTL_S = 5.0


class UnknownModelError(LookupError):
    """Triton has no such model (a product with no trained models)."""


def verdict_for(score: float, review: float, reject: float) -> Verdict:
    """docs/models.md: SCORE > reject -> reject; review < SCORE <= reject -> review; else pass."""
    if score > reject:
        return "reject"
    if score > review:
        return "review"
    return "pass"


@dataclass(frozen=True)
class ModelInfo:
    """What a verdict needs to know about the models behind an ensemble."""

    name: str  # the ensemble the worker calls
    classifier: str  # the model inside it that carries the trained weights
    classes: dict[int, tuple[str, ...]] = field(default_factory=dict)  # version -> class names
    input_space: dict[int, Reference] = field(default_factory=dict)  # version -> input-space reference

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """The classifier's input geometry as its references record it (one for every version)."""
        return next((r.input_hw for r in self.input_space.values()), None)


@dataclass(frozen=True)
class Scored:
    """One unit judged by one classifier version, with that version's own thresholds."""

    score: float
    class_probs: dict[str, float]
    review_threshold: float
    reject_threshold: float
    model_version: int
    classifier: str = ""
    input_space: Reference | None = None  # the reference of the version that scored it

    @property
    def verdict(self) -> Verdict:
        return verdict_for(self.score, self.review_threshold, self.reject_threshold)

    @property
    def defect(self) -> str:
        """Most likely defect class (the first class, 'good', excluded)."""
        names = list(self.class_probs)
        defects = {c: self.class_probs[c] for c in names[1:]}
        return max(defects, key=defects.__getitem__) if defects else "defect"


@dataclass(frozen=True)
class Failed:
    reason: str


ScoreOutcome = Scored | Failed


@dataclass(frozen=True)
class Measured:
    """One frame measured by a measurement model (pipeline.inspections.base), and its version."""

    measurement: Measurement
    model: str
    model_version: str


MeasureOutcome = Measured | Failed


def _param(config: dict, key: str) -> str | None:
    value = config.get("parameters", {}).get(key)
    return value.get("string_value") if value else None


def parse_classes(raw: str | None) -> dict[int, tuple[str, ...]]:
    """The ``classes`` parameter: JSON ``{"<version>": ["good", ...]}``."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[int, tuple[str, ...]] = {}
    for key, names in data.items():
        if str(key).isdigit() and isinstance(names, list):
            out[int(key)] = tuple(str(n) for n in names)
    return out


def _is_not_found(exc: InferenceServerException) -> bool:
    text = f"{exc.status() or ''} {exc.message() or ''}".lower()
    return "not_found" in text or "unknown model" in text or "not found" in text


class TritonInspector:
    """Scores encoded images with an inspection ensemble served by Triton."""

    def __init__(self, settings: TritonSettings) -> None:
        size = settings.max_grpc_message_bytes
        self._settings = settings
        # One client per replica (settings.triton.url and .urls); requests fail over (streams.replicas).
        self._replicas: Replicas[InferenceServerClient] = Replicas(
            settings.replica_urls(),
            lambda url: InferenceServerClient(
                url,
                channel_args=[
                    ("grpc.max_send_message_length", size),
                    ("grpc.max_receive_message_length", size),
                ],
            ),
        )
        self._models: dict[str, ModelInfo] = {}
        self._unknown: dict[str, float] = {}  # model -> monotonic time it was found missing

    async def close(self) -> None:
        for client in self._replicas.clients:
            await client.close()

    async def is_ready(self) -> bool:
        """Ready when any replica is (requests fail over to it)."""
        for client in self._replicas.clients:
            try:
                if await client.is_server_ready():
                    return True
            except InferenceServerException:
                continue
        return False

    async def _config(self, model: str) -> dict:
        return (await self._replicas.call(lambda c: c.get_model_config(model, as_json=True)))["config"]

    async def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        """Resolve the classifier behind an ensemble and the class names of its versions."""
        if model in self._models and not refresh:
            return self._models[model]
        self._check_not_missing(model)
        try:
            config = await self._config(model)
        except InferenceServerException as exc:
            self._raise_if_missing(model, exc)
            raise
        self._unknown.pop(model, None)
        classifier, classes, space = model, _param(config, CLASSES_PARAM), _param(config, INPUT_SPACE_PARAM)
        for step in config.get("ensemble_scheduling", {}).get("step", []):
            step_config = await self._config(step["model_name"])
            if _param(step_config, CLASSES_PARAM) is not None:
                classifier, classes = step["model_name"], _param(step_config, CLASSES_PARAM)
                space = _param(step_config, INPUT_SPACE_PARAM)
        if classes is None:
            raise RuntimeError(f"model {model!r} has no classifier declaring a 'classes' parameter")
        info = ModelInfo(name=model, classifier=classifier, classes=parse_classes(classes),
                         input_space=parse_param(space))
        self._models[model] = info
        return info

    async def warm_up(self, models: list[str], image: bytes) -> None:
        """Resolve each model and run one frame through it before the first real unit."""
        for model in models:
            await self.model_info(model)
            outcome = (await self.score(model, [image]))[0]
            if isinstance(outcome, Failed):
                raise RuntimeError(f"warm-up of {model!r} failed: {outcome.reason}")

    def _check_not_missing(self, model: str) -> None:
        """UnknownModelError while `model` was found missing less than the TTL ago."""
        missing_since = self._unknown.get(model)
        if missing_since is not None and time.monotonic() - missing_since < UNKNOWN_MODEL_TTL_S:
            raise UnknownModelError(f"Triton serves no model {model!r}")

    def _raise_if_missing(self, model: str, exc: InferenceServerException) -> None:
        """Remember and raise UnknownModelError when Triton answered "no such model"."""
        if _is_not_found(exc):
            self._unknown[model] = time.monotonic()
            raise UnknownModelError(f"Triton serves no model {model!r}") from exc

    async def _isolating(
        self, infer: Callable[[list[bytes]], Awaitable[list[_R]]], images: list[bytes], model: str
    ) -> list[_R | Failed]:
        """`infer` on the whole batch; when the batch fails, each frame alone, so one corrupt
        image costs only its own unit (`Failed` with Triton's reason)."""
        try:
            return list(await infer(images))
        except InferenceServerException as exc:
            if len(images) == 1:
                return [Failed(f"triton: {exc.message() or exc}")]
            log.warning("batch of %d failed on %s (%s); isolating frames", len(images), model, exc.message())

        async def one(image: bytes) -> _R | Failed:
            try:
                return (await infer([image]))[0]
            except InferenceServerException as exc:
                return Failed(f"triton: {exc.message() or exc}")

        return list(await asyncio.gather(*(one(image) for image in images)))

    async def score(self, model: str, images: list[bytes]) -> list[ScoreOutcome]:
        """Score a batch; per-image failures come back as `Failed` with Triton's reason."""
        if not images:
            return []
        info = await self.model_info(model)
        rows = await self._isolating(lambda batch: self._infer(info, batch), images, model)
        return await self._judge(model, info, rows)

    async def measure(self, model: str, images: list[bytes], params_json: bytes) -> list[MeasureOutcome]:
        """Measure a batch with a measurement model; per-image failures come back as `Failed`.

        Raises `UnknownModelError` when Triton serves no such model (the recipe names a model
        that is not loaded: every unit of it fails safe).
        """
        if not images:
            return []
        self._check_not_missing(model)

        async def infer(batch: list[bytes]) -> list[MeasureOutcome]:
            try:
                return await self._measure(model, batch, params_json)
            except InferenceServerException as exc:
                self._raise_if_missing(model, exc)
                raise

        return await self._isolating(infer, images, model)

    async def _measure(self, model: str, images: list[bytes], params_json: bytes) -> list[MeasureOutcome]:
        n = len(images)
        batch = np.array(images, dtype=np.object_).reshape(n, 1)
        params = np.array([params_json] * n, dtype=np.object_).reshape(n, 1)
        inputs = [InferInput(INPUT_NAME, [n, 1], "BYTES"), InferInput(PARAMS_INPUT, [n, 1], "BYTES")]
        inputs[0].set_data_from_numpy(batch)
        inputs[1].set_data_from_numpy(params)
        response = await self._replicas.call(lambda c: c.infer(
            model, inputs, outputs=[InferRequestedOutput(RESULT_OUTPUT)], client_timeout=self._settings.request_timeout_s
        ))
        raw = response.as_numpy(RESULT_OUTPUT)
        if raw is None:
            raise InferenceServerException(f"model {model!r} returned no {RESULT_OUTPUT}")
        version = str(response.get_response().model_version or "")
        out: list[MeasureOutcome] = []
        for item in raw.reshape(n):
            try:
                out.append(Measured(Measurement.from_json(item), model, version))
            except ValueError as exc:
                out.append(Failed(f"model {model!r} output out of contract: {exc}"))
        return out

    async def _infer(self, info: ModelInfo, images: list[bytes]) -> list[_Raw | Failed]:
        batch = np.array(images, dtype=np.object_).reshape(len(images), 1)
        tensor = InferInput(INPUT_NAME, list(batch.shape), "BYTES")
        tensor.set_data_from_numpy(batch)
        response = await self._replicas.call(lambda c: c.infer(
            info.name,
            [tensor],
            outputs=[InferRequestedOutput(name) for name in OUTPUTS],
            client_timeout=self._settings.request_timeout_s,
        ))
        n = len(images)
        scores = response.as_numpy(SCORE_OUTPUT)
        probs = response.as_numpy(PROBS_OUTPUT)
        thresholds = response.as_numpy(THRESHOLDS_OUTPUT)
        versions = response.as_numpy(VERSION_OUTPUT)
        missing = [name for name, arr in zip(OUTPUTS, (scores, probs, thresholds, versions), strict=True) if arr is None]
        if missing:
            raise InferenceServerException(f"model {info.name!r} returned no {', '.join(missing)}")
        scores, probs = scores.reshape(n), probs.reshape(n, -1)
        thresholds, versions = thresholds.reshape(n, 2), versions.reshape(n)
        out: list[_Raw | Failed] = []
        for s, p, (review, reject), v in zip(scores, probs, thresholds, versions, strict=True):
            if not (np.isfinite(s) and np.isfinite(review) and np.isfinite(reject)) or review > reject:
                out.append(Failed(f"model output out of contract: score {s}, thresholds [{review}, {reject}]"))
                continue
            out.append(_Raw(float(s), tuple(float(x) for x in p), float(review), float(reject), int(v)))
        return out

    async def _judge(self, model: str, info: ModelInfo, rows: list[_Raw | Failed]) -> list[ScoreOutcome]:
        unseen = {r.version for r in rows if isinstance(r, _Raw) and r.version not in info.classes}
        if unseen:  # a version deployed since the config was read: read it again
            try:
                info = await self.model_info(model, refresh=True)
            except (InferenceServerException, RuntimeError, UnknownModelError) as exc:
                log.warning("re-reading the config of %r failed: %s", model, exc)
            still = unseen - set(info.classes)
            if still:
                log.warning("%s: no class names for version(s) %s in its config", info.classifier, sorted(still))
        out: list[ScoreOutcome] = []
        for r in rows:
            if isinstance(r, Failed):
                out.append(r)
                continue
            names = info.classes.get(r.version, ())
            if len(names) != len(r.probs):
                names = ("good", *(f"class_{i}" for i in range(1, len(r.probs))))
            out.append(
                Scored(
                    score=r.score,
                    class_probs=dict(zip(names, r.probs, strict=True)),
                    review_threshold=r.review,
                    reject_threshold=r.reject,
                    model_version=r.version,
                    classifier=info.classifier,
                    input_space=info.input_space.get(r.version),
                )
            )
        return out


@dataclass(frozen=True)
class _Raw:
    """One row of a response before class names are attached."""

    score: float
    probs: tuple[float, ...]
    review: float
    reject: float
    version: int
