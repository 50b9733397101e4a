"""Turns a batch of frames into verdicts, reject commands and dead letters.

Kept free of Faust so the decision logic is tested without a broker. The rule that matters: every
frame yields exactly one result. A frame that cannot be inspected (bad metadata, unknown product,
corrupt image, Triton failure) is dead-lettered with its reason and its unit is rejected
(`cause="failsafe"`): in pharma a unit that was not inspected is never shipped.

The verdict comes from the thresholds of the very version that scored the unit (docs/models.md):
`pass`, `reject`, or `review` (grey zone: the gate removes the unit and a person decides).
Products route to `settings.stream.product_models[P]`, else by convention to `<slug>_inspector`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.imaging.codec import thumbnail_jpeg
from pipeline.inference import Failed, ModelInfo, Outcome, Scored, UnknownModelError
from pipeline.messages import (
    H_CAMERA,
    H_CAPTURE_NS,
    H_DEFECT,
    H_LINE,
    H_LOT,
    H_PRODUCT,
    H_UNIT,
    H_VERDICT,
    FrameMeta,
    Headers,
    InspectionResult,
    MessageError,
    RejectCommand,
    check_image_bytes,
    dead_letter_headers,
    header_value,
    now_ns,
)
from pipeline.model.repository import RepositoryError, slug
from pipeline.settings import Settings


@dataclass(frozen=True)
class Frame:
    """One consumed frame message and where it came from."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    topic: str
    partition: int
    offset: int
    received_ns: int

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Scorer(Protocol):
    async def model_info(self, model: str, refresh: bool = False) -> ModelInfo: ...

    async def score(self, model: str, images: list[bytes]) -> list[Outcome]: ...


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def ensemble_for(product: str, mapping: dict[str, str]) -> str:
    """The inspection ensemble of `product`: configured, else `<slug>_inspector` (docs/models.md)."""
    if product in mapping:
        return mapping[product]
    try:
        return f"{slug(product)}_inspector"
    except RepositoryError as exc:
        raise MessageError(f"unknown product {product!r}: {exc}") from None


class InspectionProcessor:
    """Decides every frame of a batch; returns the messages to publish."""

    def __init__(self, settings: Settings, scorer: Scorer, worker: str | None = None) -> None:
        self._kafka = settings.kafka
        self._models = settings.stream.product_models
        self._image_px = settings.stream.reject_image_px
        self._scorer = scorer
        self._worker = worker or worker_id()

    async def process(self, frames: list[Frame]) -> list[Outgoing]:
        out: list[Outgoing] = []
        by_model: dict[str, list[tuple[Frame, FrameMeta]]] = defaultdict(list)
        for frame in frames:
            meta: FrameMeta | None = None
            try:
                meta = FrameMeta.from_headers(frame.headers)
                check_image_bytes(frame.value)
                model = ensemble_for(meta.product, self._models)
            except MessageError as exc:
                out += self._failsafe(frame, meta, str(exc), stage="validate")
                continue
            by_model[model].append((frame, meta))

        groups = list(by_model.items())
        scored = await asyncio.gather(*(self._score_group(m, g) for m, g in groups))
        for (model, group), (info, outcomes, stage) in zip(groups, scored, strict=True):
            for (frame, meta), outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Scored) and info is not None:
                    out += self._verdict(frame, meta, info, outcome)
                else:
                    reason = outcome.reason if isinstance(outcome, Failed) else "no model info"
                    out += self._failsafe(frame, meta, reason, stage=stage, model=model)
        return out

    async def _score_group(
        self, model: str, group: list[tuple[Frame, FrameMeta]]
    ) -> tuple[ModelInfo | None, list[Outcome], str]:
        try:
            info = await self._scorer.model_info(model)
            outcomes = await self._scorer.score(model, [f.value or b"" for f, _ in group])
        except UnknownModelError:
            # A product nobody trained a model for: no model, no inspection, no shipping.
            product = group[0][1].product
            reason = f"unknown product {product!r} (no model {model!r})"
            return None, [Failed(reason) for _ in group], "validate"
        except Exception as exc:  # noqa: BLE001 - any serving failure must fail safe, not crash
            reason = f"inference unavailable: {type(exc).__name__}: {exc}"
            return None, [Failed(reason) for _ in group], "inference"
        return info, outcomes, "inference"

    def _verdict(self, frame: Frame, meta: FrameMeta, info: ModelInfo, scored: Scored) -> list[Outgoing]:
        verdict = scored.verdict
        defect = scored.defect if verdict != "pass" else "none"
        result = InspectionResult(
            unit_id=meta.unit_id,
            line=meta.line,
            camera=meta.camera,
            product=meta.product,
            lot=meta.lot,
            verdict=verdict,
            cause="model",
            inspected=True,
            defect=defect,
            score=scored.score,
            threshold=scored.reject_threshold,
            review_threshold=scored.review_threshold,
            model_name=scored.classifier or info.classifier,
            model_version=str(scored.model_version),
            capture_ns=meta.capture_ns,
            received_ns=frame.received_ns,
            inferred_ns=now_ns(),
            worker=self._worker,
            class_scores=scored.class_probs,
            image_sha256=_image_sha256(frame),
        )
        out = [Outgoing(self._kafka.topic_results, meta.unit_id.encode(), result.to_json())]
        if verdict != "pass":  # `review` units leave the line too; a person decides on them
            reason = (
                f"score {scored.score:.4g} > reject threshold {scored.reject_threshold:.4g}"
                if verdict == "reject"
                else f"score {scored.score:.4g} in review zone "
                f"({scored.review_threshold:.4g}, {scored.reject_threshold:.4g}]: for a person to decide"
            )
            out.append(self._reject(result, f"{result.model_name} v{result.model_version}: {reason}"))
            out += self._reject_image(frame, result)
        return out

    def _failsafe(
        self, frame: Frame, meta: FrameMeta | None, reason: str, stage: str, model: str = ""
    ) -> list[Outgoing]:
        # Without parsable metadata, keep whatever identity the frame does carry.
        h = lambda name: header_value(frame.headers, name)  # noqa: E731
        unit = meta.unit_id if meta else (h(H_UNIT) or _key(frame) or frame.source)
        now = now_ns()
        result = InspectionResult(
            unit_id=unit,
            line=meta.line if meta else h(H_LINE),
            camera=meta.camera if meta else h(H_CAMERA),
            product=meta.product if meta else h(H_PRODUCT),
            lot=meta.lot if meta else h(H_LOT),
            verdict="reject",
            cause="failsafe",
            inspected=False,
            defect="uninspected",
            score=None,
            threshold=None,
            model_name=model,
            model_version="",
            capture_ns=meta.capture_ns if meta else frame.received_ns,
            received_ns=frame.received_ns,
            inferred_ns=now,
            worker=self._worker,
            error=reason,
            image_sha256=_image_sha256(frame),
        )
        dead = Outgoing(
            self._kafka.topic_deadletter,
            frame.key,
            frame.value,
            dead_letter_headers(frame.headers, reason, stage, frame.source),
        )
        return [
            dead,
            Outgoing(self._kafka.topic_results, unit.encode(), result.to_json()),
            self._reject(result, f"not inspected: {reason}"),
            *self._reject_image(frame, result),
        ]

    def _reject_image(self, frame: Frame, result: InspectionResult) -> list[Outgoing]:
        """A small JPEG of a unit leaving the line, for the batch record (none if undecodable)."""
        if not self._image_px or not frame.value:
            return []
        jpeg = thumbnail_jpeg(frame.value, self._image_px)
        if jpeg is None:
            return []
        headers = [
            (H_UNIT, result.unit_id.encode()),
            (H_LINE, result.line.encode()),
            (H_LOT, result.lot.encode()),
            (H_CAPTURE_NS, str(result.capture_ns).encode()),
            (H_VERDICT, result.verdict.encode()),
            (H_DEFECT, result.defect.encode()),
        ]
        return [Outgoing(self._kafka.topic_reject_images, result.unit_id.encode(), jpeg, headers)]

    def _reject(self, result: InspectionResult, reason: str) -> Outgoing:
        command = RejectCommand(
            unit_id=result.unit_id,
            line=result.line,
            camera=result.camera,
            lot=result.lot,
            cause=result.cause,
            defect=result.defect,
            capture_ns=result.capture_ns,
            issued_ns=now_ns(),
            verdict=result.verdict,
            reason=reason[:1000],
        )
        # Keyed by line: one line's rejects stay in order for its gate.
        return Outgoing(self._kafka.topic_rejects, result.line.encode(), command.to_json())


def _image_sha256(frame: Frame) -> str:
    return hashlib.sha256(frame.value).hexdigest() if frame.value else ""


def _key(frame: Frame) -> str:
    try:
        return frame.key.decode() if frame.key else ""
    except UnicodeDecodeError:
        return ""
