"""Turns a batch of frames into verdicts, reject commands and dead letters.

Kept free of Faust so the decision logic is tested without a broker. The rule that matters: every
frame yields exactly one result. A frame that cannot be inspected (bad metadata, unknown product,
an image of implausible size, corrupt, or with nothing to inspect in it: blank, overexposed,
dark; Triton failure) is dead-lettered with its reason and its unit is rejected
(`cause="failsafe"`): in pharma a unit that was not inspected is never shipped.

Which inspections judge a frame is `streams.routing` (the line's recipe, else the product's
classifier). A classifier's verdict comes from the thresholds of the very version that scored the
unit (docs/models.md): `pass`, `reject`, or `review` (grey zone: the gate removes the unit and a
person decides); a measurement's from the recipe's tolerances (docs/recipes.md). Several
inspections of one frame combine: the worst verdict wins, the first failing check names the defect.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Protocol, cast

from pipeline.core.health import worker_id
from pipeline.core.metrics import Metrics
from pipeline.core.times import now_ns
from pipeline.inspections.kinds import CLASSIFIER, JudgeContext, judge
from pipeline.kafka.partitioning import line_partition
from pipeline.model.input_space import check as check_input_space
from pipeline.model.input_space import describe_frame
from pipeline.recipes.book import RecipeBook
from pipeline.recipes.schema import Recipe
from pipeline.settings import Settings
from pipeline.wire.codec import nothing_to_inspect, thumbnail_jpeg
from pipeline.wire.messages import (
    H_CAMERA,
    H_CAPTURE_NS,
    H_DEFECT,
    H_LINE,
    H_LOT,
    H_PRODUCT,
    H_STATION,
    H_UNIT,
    H_VERDICT,
    MAX_TEXT_CHARS,
    FrameMeta,
    Headers,
    InspectionResult,
    MessageError,
    RejectCommand,
    check_image_bytes,
    dead_letter_headers,
    header_purpose,
    header_value,
    safe_unit_id,
    worst_verdict,
)
from streams.routing import RecipeRefusal, Step, plan_for
from streams.triton_client import Failed, Measured, MeasureOutcome, ModelInfo, Scored, ScoreOutcome, UnknownModelError

# A frame's input-space descriptors (pipeline.model.input_space.describe); None: not measured.
Described = dict[str, float] | None
# The defect a unit sent to review by the input-space check alone is recorded under.
INPUT_SPACE_DEFECT = "out_of_distribution"

log = logging.getLogger(__name__)


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
    # The broker's (create/log-append) time of the message; None: judge capture time by received_ns.
    timestamp_ns: int | None = None

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None  # None: by key; a line-keyed topic's line partition otherwise


@dataclass(frozen=True)
class _ImageJob:
    """A reject thumbnail still to render: `process` renders them all at once, off the event loop."""

    frame: Frame
    result: InspectionResult


class Scorer(Protocol):
    async def model_info(self, model: str, refresh: bool = False) -> ModelInfo: ...

    async def score(self, model: str, images: list[bytes]) -> list[ScoreOutcome]: ...

    async def measure(self, model: str, images: list[bytes], params_json: bytes) -> list[MeasureOutcome]: ...


@dataclass(frozen=True)
class Plan:
    frame: Frame
    meta: FrameMeta
    recipe: Recipe | None
    steps: tuple[Step, ...]


@dataclass
class FrameVerdict:
    """The combined verdict of a frame's inspections (worst wins; first failing check names it)."""

    verdict: str = "pass"
    defect: str = "none"
    reasons: list[str] = field(default_factory=list)
    measurements: dict[str, float | int | str | bool] = field(default_factory=dict)
    parts: list[dict[str, object]] = field(default_factory=list)
    score: float | None = None
    threshold: float | None = None
    review_threshold: float | None = None
    class_scores: dict[str, float] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)

    def add(self, verdict: str, defect: str) -> None:
        if verdict != "pass" and self.defect == "none":
            self.defect = defect
        self.verdict = worst_verdict(self.verdict, verdict)


class InspectionProcessor:
    """Decides every frame of a batch; returns the messages to publish."""

    def __init__(
        self, settings: Settings, scorer: Scorer, worker: str | None = None, recipes: RecipeBook | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._kafka = settings.kafka
        self._models = settings.stream.product_models
        self._image_px = settings.stream.reject_image_px
        # A review unit's frame is kept near full size: a person decides on it, and it may train a model.
        self._review_px = settings.stream.review_image_px or self._image_px
        self._scorer = scorer
        self._worker = worker or worker_id()
        self._recipes = recipes
        m = metrics if metrics is not None else Metrics()
        self._verdicts = m.counter("linesight_verdicts")
        self._latency = m.histogram("linesight_capture_to_verdict_seconds")
        self._dead_letters = m.counter("linesight_dead_letters")

    async def process(self, frames: list[Frame]) -> list[Outgoing]:
        decided = await self._process(frames)
        jobs = [o for o in decided if isinstance(o, _ImageJob)]
        if not jobs:
            return cast("list[Outgoing]", decided)
        # Decoding a frame for its thumbnail is CPU work (PIL releases the GIL): off the event loop.
        images = iter(await asyncio.to_thread(lambda: [self._render_image(j) for j in jobs]))
        out: list[Outgoing] = []
        for o in decided:
            if isinstance(o, _ImageJob):
                out += next(images)
            else:
                out.append(o)
        return out

    async def _process(self, frames: list[Frame]) -> list[Outgoing | _ImageJob]:
        out: list[Outgoing | _ImageJob] = []
        plans: list[Plan] = []
        # Decoding thumbnails is CPU work (PIL releases the GIL): off the event loop.
        blank = await asyncio.to_thread(lambda: [_nothing_to_inspect(f.value) for f in frames])
        for frame, nothing in zip(frames, blank, strict=True):
            meta: FrameMeta | None = None
            try:
                meta = FrameMeta.from_headers(frame.headers, ref_ns=frame.timestamp_ns or frame.received_ns)
                check_image_bytes(frame.value)
                if nothing:
                    raise MessageError(nothing)
                recipe, steps = plan_for(meta, self._models, self._recipes)
            except RecipeRefusal as exc:
                out += self._failsafe(frame, meta, str(exc), stage="recipe", recipe=self._recipe_ref(meta))
                continue
            except MessageError as exc:
                # The frame itself is refused or shows nothing: no thumbnail (it would show
                # nothing either, and a flood of such frames must not cost a decode each).
                out += self._failsafe(frame, meta, str(exc), stage="validate", image=False)
                continue
            plans.append(Plan(frame, meta, recipe, steps))

        groups: dict[tuple[str, str, bytes], list[int]] = defaultdict(list)
        for i, plan in enumerate(plans):
            for step in plan.steps:
                groups[(step.kind, step.model, step.params_json)].append(i)
        keys = list(groups)
        answers = await asyncio.gather(*(self._run_group(k, [plans[i] for i in groups[k]]) for k in keys))
        outcome: dict[tuple[int, tuple[str, str, bytes]], tuple[object, str]] = {}
        for key, (results, stage) in zip(keys, answers, strict=True):
            for i, result in zip(groups[key], results, strict=True):
                outcome[(i, key)] = (result, stage)
        for i, plan in enumerate(plans):
            step_outcomes = [(step, *outcome[(i, (step.kind, step.model, step.params_json))]) for step in plan.steps]
            out += self._decide(plan, step_outcomes)
        return out

    def _recipe_ref(self, meta: FrameMeta | None) -> str:
        entry = self._recipes.get(meta.line) if (self._recipes is not None and meta is not None) else None
        return entry.ref if isinstance(entry, Recipe) else ""

    async def _run_group(self, key: tuple[str, str, bytes], plans: list[Plan]) -> tuple[list[object], str]:
        kind, model, params_json = key
        if kind == CLASSIFIER:
            info, outcomes, described, stage = await self._score_group(model, [(p.frame, p.meta) for p in plans])
            return [(info, o, v) for o, v in zip(outcomes, described, strict=True)], stage
        try:
            measured = await self._scorer.measure(model, [p.frame.value or b"" for p in plans], params_json)
        except UnknownModelError:
            return [Failed(f"recipe names model {model!r}, which Triton does not serve")] * len(plans), "validate"
        except Exception as exc:  # noqa: BLE001 - any serving failure must fail safe, not crash
            return [Failed(f"inference unavailable: {type(exc).__name__}: {exc}")] * len(plans), "inference"
        return list(measured), "inference"

    def _decide(self, plan: Plan, steps: list[tuple[Step, object, str]]) -> list[Outgoing | _ImageJob]:
        frame, meta = plan.frame, plan.meta
        ref = plan.recipe.ref if plan.recipe else ""
        d = FrameVerdict()
        for step, result, stage in steps:
            if step.kind == CLASSIFIER:
                # _run_group answers a classifier step with (model info, outcome, descriptors).
                info, scored, described = cast("tuple[ModelInfo | None, ScoreOutcome, Described]", result)
                if not isinstance(scored, Scored) or info is None:
                    reason = scored.reason if isinstance(scored, Failed) else "no model info"
                    return self._failsafe(frame, meta, reason, stage=stage, model=step.model, recipe=ref)
                self._add_scored(d, info, scored)
                if described is None and scored.input_space is not None:  # a version deployed since the
                    described = _describe([frame.value or b""], scored.input_space.input_hw)[0]  # config was read
                self._add_input_space(d, info, scored, described)
                continue
            if isinstance(result, Failed):
                return self._failsafe(frame, meta, result.reason, stage=stage, model=step.model, recipe=ref)
            assert isinstance(result, Measured) and step.params is not None
            try:
                ctx = JudgeContext(lot=meta.lot, today=datetime.fromtimestamp(meta.capture_ns / 1e9, UTC).date())
                j = judge(step.kind, result.measurement, step.params, ctx)
            except (ValueError, KeyError, TypeError) as exc:
                reason = f"{step.model} measurement cannot be judged: {type(exc).__name__}: {exc}"
                return self._failsafe(frame, meta, reason, stage="judge", model=step.model, recipe=ref)
            d.add(j.verdict, j.defect)
            d.reasons += j.reasons
            d.measurements |= j.measurements
            d.measurements |= j.flags
            d.parts += [asdict(p) for p in j.parts]
            d.models.append(step.model)
            d.versions.append(result.model_version)
        return self._verdict(frame, meta, d, ref)

    @staticmethod
    def _add_scored(d: FrameVerdict, info: ModelInfo, scored: Scored) -> None:
        verdict = scored.verdict
        d.add(verdict, scored.defect)
        d.score, d.threshold, d.review_threshold = scored.score, scored.reject_threshold, scored.review_threshold
        d.class_scores = scored.class_probs
        d.models.append(scored.classifier or info.classifier)
        d.versions.append(str(scored.model_version))
        if verdict == "reject":
            d.reasons.append(f"score {scored.score:.4g} > reject threshold {scored.reject_threshold:.4g}")
        elif verdict == "review":
            d.reasons.append(
                f"score {scored.score:.4g} in review zone "
                f"({scored.review_threshold:.4g}, {scored.reject_threshold:.4g}]: for a person to decide"
            )

    @staticmethod
    def _add_input_space(d: FrameVerdict, info: ModelInfo, scored: Scored, described: Described) -> None:
        """The input-space check of the version that scored the unit (docs/models.md): outside
        its training images' range, a `pass` becomes `review` (a person decides); `review` and
        `reject` stay. The outcome and the descriptors are recorded with the verdict."""
        who = f"{scored.classifier or info.classifier} v{scored.model_version}"
        finding = check_input_space(scored.input_space, described, who)
        d.measurements["input_space"] = finding.status if finding.status == "in" else finding.summary()
        for name, value in (described or {}).items():
            if math.isfinite(value):
                d.measurements[f"input_space.{name}"] = round(value, 4)
        if finding.doubtful:
            d.add("review", INPUT_SPACE_DEFECT)
            d.reasons += finding.reasons

    async def _score_group(
        self, model: str, group: list[tuple[Frame, FrameMeta]]
    ) -> tuple[ModelInfo | None, list[ScoreOutcome], list[Described], str]:
        images = [f.value or b"" for f, _ in group]
        try:
            info = await self._scorer.model_info(model)
            # The frames are measured for the input-space check while Triton scores them.
            outcomes, described = await asyncio.gather(
                self._scorer.score(model, images), asyncio.to_thread(_describe, images, info.input_hw))
        except UnknownModelError:
            # A product nobody trained a model for: no model, no inspection, no shipping.
            product = group[0][1].product
            reason = f"unknown product {product!r} (no model {model!r})"
            return None, [Failed(reason) for _ in group], [None] * len(group), "validate"
        except Exception as exc:  # noqa: BLE001 - any serving failure must fail safe, not crash
            reason = f"inference unavailable: {type(exc).__name__}: {exc}"
            return None, [Failed(reason) for _ in group], [None] * len(group), "inference"
        return info, outcomes, described, "inference"

    def _verdict(self, frame: Frame, meta: FrameMeta, d: FrameVerdict, recipe: str) -> list[Outgoing | _ImageJob]:
        result = InspectionResult(
            unit_id=meta.unit_id,
            line=meta.line,
            camera=meta.camera,
            product=meta.product,
            lot=meta.lot,
            verdict=d.verdict,  # type: ignore[arg-type]
            cause="model",
            inspected=True,
            defect=d.defect,
            score=d.score,
            threshold=d.threshold,
            review_threshold=d.review_threshold,
            model_name="+".join(d.models),
            model_version="+".join(d.versions),
            capture_ns=meta.capture_ns,
            received_ns=frame.received_ns,
            inferred_ns=now_ns(),
            worker=self._worker,
            class_scores=d.class_scores,
            image_sha256=_image_sha256(frame),
            recipe=recipe,
            measurements=d.measurements,
            parts=d.parts,
            reasons=d.reasons,
            station=meta.station,
            purpose=meta.purpose,
            frame_source=frame.source,
        )
        try:
            payload = result.to_json()
        except MessageError as exc:  # e.g. a NaN a model returned: not a verdict anyone may act on
            reason = f"verdict breaks the result contract: {exc}"[:1000]
            return self._failsafe(frame, meta, reason, stage="judge", model="+".join(d.models), recipe=recipe)
        out: list[Outgoing | _ImageJob] = [self._by_line(self._kafka.topic_results, result.line, payload)]
        self._verdicts.labels(result.line, result.verdict, "model").inc()
        self._latency.labels(result.line).observe(max(0, result.inferred_ns - result.capture_ns) / 1e9)
        if d.verdict != "pass":  # `review` units leave the line too; a person decides on them
            who = recipe or f"{result.model_name} v{result.model_version}"
            out.append(self._reject(result, f"{who}: {'; '.join(d.reasons) or d.defect}"))
            out.append(_ImageJob(frame, result))
        return out

    def _failsafe(
        self, frame: Frame, meta: FrameMeta | None, reason: str, stage: str, model: str = "", recipe: str = "",
        image: bool = True,
    ) -> list[Outgoing | _ImageJob]:
        # Without parsable metadata, keep whatever identity the frame does carry (bounded; an
        # unusable unit id becomes the surrogate the actuator admits the unit by).
        h = lambda name: header_value(frame.headers, name)[:MAX_TEXT_CHARS]  # noqa: E731
        unit = meta.unit_id if meta else safe_unit_id(header_value(frame.headers, H_UNIT) or _key(frame) or frame.source)
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
            recipe=recipe,
            station=meta.station if meta else "",
            purpose=meta.purpose if meta else header_purpose(frame.headers),
        )
        self._verdicts.labels(result.line, "reject", "failsafe").inc()
        self._dead_letters.labels(result.line, stage).inc()
        log.warning("unit %s dead-lettered and fail-safe rejected at %s: %s", unit, stage, reason,
                    extra={"unit_id": unit, "lot": result.lot, "line": result.line})
        dead = Outgoing(
            self._kafka.topic_deadletter,
            frame.key,
            frame.value,
            dead_letter_headers(frame.headers, reason, stage, frame.source),
        )
        return [
            dead,
            self._by_line(self._kafka.topic_results, result.line, result.to_json()),
            self._reject(result, f"not inspected: {reason}"),
            *([_ImageJob(frame, result)] if image else []),
        ]

    def _render_image(self, job: _ImageJob) -> list[Outgoing]:
        """A small JPEG of a unit leaving the line, for the batch record (none if undecodable)."""
        frame, result = job.frame, job.result
        px = self._review_px if result.verdict == "review" else self._image_px
        if not px or not frame.value:
            return []
        jpeg = thumbnail_jpeg(frame.value, px, quality=92 if result.verdict == "review" else 85)
        if jpeg is None:
            return []
        headers = [
            (H_UNIT, result.unit_id.encode()),
            (H_LINE, result.line.encode()),
            (H_LOT, result.lot.encode()),
            (H_CAPTURE_NS, str(result.capture_ns).encode()),
            (H_VERDICT, result.verdict.encode()),
            (H_DEFECT, result.defect.encode()),
            *([(H_STATION, result.station.encode())] if result.station else []),
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
        return self._by_line(self._kafka.topic_rejects, result.line, command.to_json())

    def _by_line(self, topic: str, line: str, value: bytes) -> Outgoing:
        """A record of a line-keyed topic: on the line's partition, where its actuator reads."""
        return Outgoing(topic, line.encode(), value, partition=line_partition(self._kafka, line))


def _nothing_to_inspect(data: bytes | None) -> str:
    """Why this frame's image cannot be inspected ('' when it can be sent to inference): refused
    at the edge (implausible size, not PNG/JPEG, undecodable) or nothing to inspect in it
    (blank, overexposed, dark). Never `pass` for such a frame: it is fail-safe rejected."""
    if not data:
        return ""  # check_image_bytes names it
    try:
        return nothing_to_inspect(data) or ""
    except ValueError as exc:
        return str(exc)


def _describe(images: list[bytes], size: tuple[int, int] | None) -> list[Described]:
    """Input-space descriptors of each frame at the classifier's input geometry; None where the
    classifier records no reference (nothing to compare with) or the frame cannot be read."""
    out: list[Described] = []
    for data in images:
        try:
            out.append(describe_frame(data, size) if size is not None else None)
        except ValueError:
            out.append(None)  # Triton refuses it too: the unit is fail-safe rejected
    return out


def _image_sha256(frame: Frame) -> str:
    return hashlib.sha256(frame.value).hexdigest() if frame.value else ""


def _key(frame: Frame) -> str:
    try:
        return frame.key.decode() if frame.key else ""
    except UnicodeDecodeError:
        return ""
