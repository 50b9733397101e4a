"""Wire formats of every LineSight topic.

A frame is the encoded image (PNG or JPEG bytes, never base64) as the Kafka message value, with
its metadata in headers. Every other message is a small JSON document. Each type here validates
what it reads, so a malformed message becomes a `MessageError` with a reason (dead-lettered),
never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Literal, TypeVar

Verdict = Literal["pass", "reject", "review"]
Cause = Literal["model", "failsafe"]

# Frame header names (bytes values, UTF-8).
H_UNIT = "ls-unit-id"
H_LINE = "ls-line"
H_CAMERA = "ls-camera"
H_PRODUCT = "ls-product"
H_CAPTURE_NS = "ls-capture-ns"
H_CONTENT_TYPE = "content-type"
H_LOT = "ls-lot"
# Optional: the conveyor encoder count at capture (encoder-timed lines, see docs/actuation.md).
H_ENCODER = "ls-encoder-count"
# Reject images (linesight.reject-images): the verdict and class the image documents.
H_VERDICT = "ls-verdict"
H_DEFECT = "ls-defect"
# Dead-letter headers added to the original frame's headers.
H_DLQ_REASON = "ls-dlq-reason"
H_DLQ_STAGE = "ls-dlq-stage"
H_DLQ_SOURCE = "ls-dlq-source"

REQUIRED_FRAME_HEADERS = (H_UNIT, H_LINE, H_CAMERA, H_PRODUCT, H_CAPTURE_NS)
IMAGE_CONTENT_TYPES = ("image/png", "image/jpeg")

Headers = Sequence[tuple[str, bytes | None]]


class MessageError(ValueError):
    """A message that cannot be processed; the text is the dead-letter reason."""


@dataclass(frozen=True)
class FrameMeta:
    """Metadata of one camera frame: which unit, where and when it was captured."""

    unit_id: str
    line: str
    camera: str
    product: str
    capture_ns: int
    content_type: str = "image/png"
    lot: str = ""
    encoder_count: int | None = None

    def to_headers(self) -> list[tuple[str, bytes]]:
        headers = [
            (H_UNIT, self.unit_id),
            (H_LINE, self.line),
            (H_CAMERA, self.camera),
            (H_PRODUCT, self.product),
            (H_CAPTURE_NS, str(self.capture_ns)),
            (H_CONTENT_TYPE, self.content_type),
        ]
        if self.lot:
            headers.append((H_LOT, self.lot))
        if self.encoder_count is not None:
            headers.append((H_ENCODER, str(self.encoder_count)))
        return [(k, v.encode()) for k, v in headers]

    @classmethod
    def from_headers(
        cls, headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None
    ) -> FrameMeta:
        """Parse frame headers; raise `MessageError` naming every missing or bad field."""
        items = headers.items() if isinstance(headers, Mapping) else (headers or [])
        values: dict[str, str] = {}
        for key, raw in items:
            if raw is None:
                continue
            try:
                values[key] = raw.decode() if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError:
                raise MessageError(f"header {key!r} is not UTF-8") from None
        missing = [h for h in REQUIRED_FRAME_HEADERS if not values.get(h, "").strip()]
        if missing:
            raise MessageError(f"missing metadata: {', '.join(missing)}")
        try:
            capture_ns = int(values[H_CAPTURE_NS])
        except ValueError:
            raise MessageError(f"{H_CAPTURE_NS} is not an integer: {values[H_CAPTURE_NS]!r}") from None
        if capture_ns <= 0:
            raise MessageError(f"{H_CAPTURE_NS} must be positive, got {capture_ns}")
        encoder_count: int | None = None
        if values.get(H_ENCODER, "").strip():
            try:
                encoder_count = int(values[H_ENCODER])
            except ValueError:
                raise MessageError(f"{H_ENCODER} is not an integer: {values[H_ENCODER]!r}") from None
        content_type = values.get(H_CONTENT_TYPE, "image/png")
        if content_type not in IMAGE_CONTENT_TYPES:
            raise MessageError(f"unsupported content-type {content_type!r}")
        return cls(
            unit_id=values[H_UNIT],
            line=values[H_LINE],
            camera=values[H_CAMERA],
            product=values[H_PRODUCT],
            capture_ns=capture_ns,
            content_type=content_type,
            lot=values.get(H_LOT, ""),
            encoder_count=encoder_count,
        )


def check_image_bytes(data: bytes | None) -> None:
    """Cheap signature check so obviously broken frames never reach Triton."""
    if not data:
        raise MessageError("empty frame")
    if not (data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff")):
        raise MessageError("frame is neither PNG nor JPEG")


_J = TypeVar("_J", bound="JsonMessage")


@dataclass(frozen=True)
class JsonMessage:
    """Base of the JSON messages: strict decoding with reasons."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls: type[_J], data: bytes | str | None) -> _J:
        if not data:
            raise MessageError(f"empty {cls.__name__}")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MessageError(f"{cls.__name__} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise MessageError(f"{cls.__name__} must be a JSON object")
        names = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        missing = sorted(required - doc.keys())
        if missing:
            raise MessageError(f"{cls.__name__} misses {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in doc.items() if k in names})
        except TypeError as exc:
            raise MessageError(f"bad {cls.__name__}: {exc}") from None


@dataclass(frozen=True)
class InspectionResult(JsonMessage):
    """One verdict per unit, published to the results topic."""

    unit_id: str
    line: str
    camera: str
    product: str
    lot: str
    verdict: Verdict
    cause: Cause
    inspected: bool
    defect: str  # predicted defect class, "none" on pass, "uninspected" when fail-safe
    score: float | None  # higher = more likely defective; None when not inspected
    threshold: float | None  # the judging version's reject threshold (score > it: reject)
    model_name: str  # the classifier (versioned weights) that judged the unit
    model_version: str  # the version that judged it, from the artifact's own MODEL_VERSION
    capture_ns: int
    received_ns: int
    inferred_ns: int
    worker: str
    error: str = ""
    class_scores: dict[str, float] = field(default_factory=dict)
    # The judging version's review threshold (review < score <= threshold: review).
    review_threshold: float | None = None
    # sha256 (hex) of the frame's encoded image bytes: ties the audited decision to its image.
    image_sha256: str = ""
    # The line's recipe that judged the unit (``id@vN``; "" for a line without a recipe).
    recipe: str = ""
    # Measured numbers on every result, pass or not (fill_mm, pockets_ok, gtin, ...).
    measurements: dict[str, float | int | str | bool] = field(default_factory=dict)
    # Per-sub-unit verdicts of a frame holding several units (blister pockets): index, verdict, defect, reason.
    parts: list[dict[str, object]] = field(default_factory=list)
    # One line per failing check (measured value and the tolerance it broke).
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RejectCommand(JsonMessage):
    """Tells the reject gate to remove a unit (a `review` unit too: a person then decides)."""

    unit_id: str
    line: str
    camera: str
    lot: str
    cause: Cause
    defect: str
    capture_ns: int
    issued_ns: int
    verdict: Verdict = "reject"
    reason: str = ""


@dataclass(frozen=True)
class Actuation(JsonMessage):
    """Record of a reject the actuator fired."""

    unit_id: str
    line: str
    lot: str
    cause: str  # model, late or failsafe (see docs/actuation.md)
    defect: str
    capture_ns: int
    command_issued_ns: int
    fired_ns: int
    actuator: str


@dataclass(frozen=True)
class GroundTruth(JsonMessage):
    """What the simulator really rendered; kept off the frame so the model never sees it."""

    unit_id: str
    line: str
    lot: str
    product: str
    label: Literal["good", "defect"]
    defect: str
    capture_ns: int
    source: str = "simulator"


@dataclass(frozen=True)
class RecipeActivation(JsonMessage):
    """A line switched to a recipe (topic ``linesight.recipes``, compacted, keyed by line).

    The whole validated recipe travels with it, so workers on any host run exactly what was
    approved without reading files; `sha256` is the recipe's content hash (docs/recipes.md).
    """

    line: str
    recipe: dict[str, object]
    recipe_ref: str
    sha256: str
    user: str
    reason: str
    activated_ns: int


@dataclass(frozen=True)
class Heartbeat(JsonMessage):
    """A liveness signal for the reject actuator's watchdog (docs/actuation.md).

    Workers send one every ``watchdog.heartbeat_interval_s`` with the result of their own Triton
    readiness probe; the actuator sends its own and counts the broker healthy while they come
    back to it through the broker.
    """

    source: str  # worker id, or the actuator's name
    kind: Literal["worker", "actuator"]
    sent_ns: int
    triton_ready: bool | None = None
    detail: str = ""


@dataclass(frozen=True)
class GateEventRecord(JsonMessage):
    """What physically happened to one unit at the reject gate: exactly one per captured unit.

    outcome: fired, passed, fire_failed (the PLC did not confirm) or missed (window closed).
    cause: model (the verdict), late (no verdict before the cutoff) or failsafe (pipeline
    unhealthy, or the upstream's own fail-safe verdict); for passed units: model.
    """

    unit_id: str
    line: str
    lot: str
    outcome: str
    cause: str
    admitted: bool  # the actuator saw the unit's frame (False: known only from a command)
    deadline_ns: int
    fire_at_ns: int
    cutoff_ns: int
    window_start_ns: int
    window_end_ns: int
    acted_ns: int
    actuator: str
    verdict_ns: int | None = None
    fired_ns: int | None = None
    verdict: str = ""  # the action received in time: pass or reject ('' when none came in time)
    reason: str = ""
    capture_ns: int = 0


@dataclass(frozen=True)
class AlarmRecord(JsonMessage):
    """An alarm raised (``active``) or cleared. The clear carries the raise's id and time."""

    alarm_id: str
    code: str
    active: bool
    raised_ns: int
    reason: str
    source: str
    cleared_ns: int | None = None
    clear_reason: str = ""


def dead_letter_headers(
    headers: Headers | None, reason: str, stage: str, source: str
) -> list[tuple[str, bytes]]:
    """Original headers plus why, where and from which offset a message was dead-lettered."""
    kept = [(k, v if v is not None else b"") for k, v in (headers or []) if not k.startswith("ls-dlq-")]
    return kept + [
        (H_DLQ_REASON, reason.encode()[:4000]),
        (H_DLQ_STAGE, stage.encode()),
        (H_DLQ_SOURCE, source.encode()),
    ]


def header_value(headers: Headers | None, name: str) -> str:
    """One header as text ('' when absent or undecodable)."""
    for key, raw in headers or []:
        if key == name and raw is not None:
            try:
                return raw.decode()
            except UnicodeDecodeError:
                return ""
    return ""
