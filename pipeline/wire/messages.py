"""Wire formats of every LineSight topic.

A frame is the encoded image (PNG or JPEG bytes, never base64) as the Kafka message value, with
its metadata in headers. Every other message is a small JSON document. Each type here validates
what it reads, so a malformed message becomes a `MessageError` with a reason (dead-lettered),
never a crash; a JSON message is held to the same check before it is written (`to_json`), and
carries its contract's version (`schema_version`; JSON Schemas in docs/schemas/, docs/integration.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from pipeline.core.times import NS_PER_S

Verdict = Literal["pass", "reject", "review"]
# Verdicts from the mildest to the most severe: the results of one unit (several stations)
# combine to the most severe, and tables list them in this order.
VERDICT_ORDER: tuple[str, ...] = ("pass", "review", "reject")
# The same order as a ClickHouse array, and the worst verdict of a group of rows.
VERDICT_ORDER_SQL = "[" + ", ".join(f"'{v}'" for v in VERDICT_ORDER) + "]"
WORST_VERDICT_SQL = f"{VERDICT_ORDER_SQL}[max(indexOf({VERDICT_ORDER_SQL}, verdict))]"


def worst_verdict(*verdicts: str) -> str:
    """The most severe of `verdicts` (VERDICT_ORDER)."""
    return max(verdicts, key=VERDICT_ORDER.index)
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
# Optional, from a GenICam camera (docs/cameras.md): the inspection station the frame belongs to,
# the camera's own frame (block) id and its timestamp (ns, the camera's clock).
H_STATION = "ls-station"
H_FRAME_ID = "ls-frame-id"
H_CAMERA_TS = "ls-camera-ts-ns"
# Optional: why the unit is on the line when it is not production. Only ``challenge`` (a known
# unit of a recipe's challenge set, docs/validation.md) is defined; absent means production.
H_PURPOSE = "ls-purpose"
PURPOSE_CHALLENGE = "challenge"
PURPOSES = ("", PURPOSE_CHALLENGE)
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

# Edge limits. The unit id is what the reject gate is told to remove: the OPC UA gate
# takes at most 256 characters, so a longer id is refused here, not at fire time.
MAX_UNIT_ID_CHARS = 256
MAX_TEXT_CHARS = 256  # line, camera, lot
MAX_HEADER_BYTES = 4096  # any one header value, before decoding it
# JSON messages: the identity fields as frame headers allow them, any other string (an error, a
# reason, a recipe text) at most this long. Longer is refused on both ends, never truncated.
SHORT_TEXT_FIELDS = frozenset({"line", "camera", "lot", "product", "station", "purpose"})
MAX_STRING_CHARS = 65536
# The version a JSON message without ``schema_version`` is read as: every message written before
# versions existed has the version 1 fields (docs/integration.md, "Versions").
UNVERSIONED_SCHEMA_VERSION = 1
SCHEMA_VERSION_FIELD = "schema_version"
# A station name (line configuration and recipe): short, lower case, safe in a SQL value and a path.
STATION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
PRODUCT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+/-]*(?: [A-Za-z0-9._+/-]+)*")
MAX_PRODUCT_CHARS = 128
# Wire timestamps are int64 epoch ns (Kafka, ClickHouse DateTime64): anything else is nonsense.
MAX_EPOCH_NS = 2**63 - 1
# A frame's capture time against the broker's (or receiver's) time of the message: a camera
# clock a little ahead is tolerated, one far ahead or a frame hours old is not a live unit.
CAPTURE_MAX_AHEAD_NS = 5 * NS_PER_S
CAPTURE_MAX_AGE_NS = 3600 * NS_PER_S


class MessageError(ValueError):
    """A message that cannot be processed; the text is the dead-letter reason."""


def text_problem(name: str, value: object, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Why `value` is not an identifier-like text field (None when fine): a non-empty printable
    string without surrounding spaces, at most `max_chars` characters."""
    if not isinstance(value, str):
        return f"{name} must be a string, got {type(value).__name__}"
    if not value:
        return f"without a {name}"
    if len(value) > max_chars:
        return f"{name} has {len(value)} characters (at most {max_chars})"
    if not value.isprintable():
        return f"{name} {value[:40]!r} has control or non-printable characters"
    if value != value.strip():
        return f"{name} {value[:40]!r} has leading or trailing spaces"
    return None


def unit_id_problem(value: object) -> str | None:
    """Why `value` cannot name a unit at the reject gate (None when it can)."""
    return text_problem("unit id", value, MAX_UNIT_ID_CHARS)


def safe_unit_id(value: str) -> str:
    """`value` when it is a usable unit id, else a stable surrogate (``invalid-<sha256[:16]>``).

    A frame with an unusable id is still a unit on the belt: the worker's fail-safe reject and
    the actuator's admission both name it by this surrogate, so the two meet at the gate."""
    if unit_id_problem(value) is None:
        return value
    return "invalid-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def timestamp_problem(name: str, ns: int, ref_ns: int | None = None) -> str | None:
    """Why epoch-ns `ns` is not a plausible time (None when it is). With `ref_ns` (the broker's
    time of the message), it must also lie within ``CAPTURE_MAX_AGE_NS`` before and
    ``CAPTURE_MAX_AHEAD_NS`` after it."""
    if not 0 < ns <= MAX_EPOCH_NS:
        return f"{name} {ns} is not an epoch-ns time (1..{MAX_EPOCH_NS})"
    if ref_ns is not None and ref_ns > 0:
        if ns > ref_ns + CAPTURE_MAX_AHEAD_NS:
            return f"{name} is {(ns - ref_ns) / NS_PER_S:.3g} s ahead of the broker time (clock skew?)"
        if ns < ref_ns - CAPTURE_MAX_AGE_NS:
            return f"{name} is {(ref_ns - ns) / NS_PER_S:.3g} s before the broker time (stale frame)"
    return None


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
    # Multi-station lines: which station's camera took the frame ("" on a one-camera line);
    # `camera` then holds the camera's serial number.
    station: str = ""
    frame_id: int | None = None
    camera_ts_ns: int | None = None
    # "" for production; "challenge" for a challenge unit that never counts as production.
    purpose: str = ""

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
        if self.station:
            headers.append((H_STATION, self.station))
        if self.frame_id is not None:
            headers.append((H_FRAME_ID, str(self.frame_id)))
        if self.camera_ts_ns is not None:
            headers.append((H_CAMERA_TS, str(self.camera_ts_ns)))
        if self.purpose:
            headers.append((H_PURPOSE, self.purpose))
        return [(k, v.encode()) for k, v in headers]

    @classmethod
    def from_headers(
        cls,
        headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
        ref_ns: int | None = None,
    ) -> FrameMeta:
        """Parse and validate frame headers; raise `MessageError` naming the first bad field.

        The one validation of frame metadata at the edge (worker and actuator): identity fields
        (unit id <= ``MAX_UNIT_ID_CHARS`` printable, product syntax), content type, and a capture
        time that is an int64 epoch-ns time and, given `ref_ns` (the message's broker time),
        within the capture window around it. A header repeated with different values is refused:
        which one counts would be a guess."""
        items = headers.items() if isinstance(headers, Mapping) else (headers or [])
        values: dict[str, str] = {}
        try:
            for key, raw in items:
                if raw is None:
                    continue
                if len(raw) > MAX_HEADER_BYTES:
                    raise MessageError(f"header {key!r} is {len(raw)} long (at most {MAX_HEADER_BYTES})")
                try:
                    value = raw.decode() if isinstance(raw, bytes) else str(raw)
                except UnicodeDecodeError:
                    raise MessageError(f"header {key!r} is not UTF-8") from None
                if values.setdefault(key, value) != value:
                    raise MessageError(f"header {key!r} is repeated with different values")
        except (TypeError, ValueError) as exc:  # not (name, value) pairs at all
            if isinstance(exc, MessageError):
                raise
            raise MessageError(f"malformed headers: {exc}") from None
        missing = [h for h in REQUIRED_FRAME_HEADERS if not values.get(h, "").strip()]
        if missing:
            raise MessageError(f"missing metadata: {', '.join(missing)}")
        capture_ns = _header_int(values, H_CAPTURE_NS)
        assert capture_ns is not None  # required above
        encoder_count = _header_int(values, H_ENCODER)
        frame_id = _header_int(values, H_FRAME_ID)
        camera_ts_ns = _header_int(values, H_CAMERA_TS)
        station = values.get(H_STATION, "")
        purpose = values.get(H_PURPOSE, "")
        content_type = values.get(H_CONTENT_TYPE, "image/png")
        if content_type not in IMAGE_CONTENT_TYPES:
            raise MessageError(f"unsupported content-type {content_type[:80]!r}")
        product = values[H_PRODUCT]
        problem = (
            unit_id_problem(values[H_UNIT])
            or text_problem(H_LINE, values[H_LINE])
            or text_problem(H_CAMERA, values[H_CAMERA])
            or (text_problem(H_LOT, values[H_LOT]) if values.get(H_LOT) else None)
            or (None if len(product) <= MAX_PRODUCT_CHARS and PRODUCT_ID.fullmatch(product)
                else f"{H_PRODUCT} {product[:40]!r} is not a product id")
            or timestamp_problem(H_CAPTURE_NS, capture_ns, ref_ns)
            or (f"{H_ENCODER} {encoder_count} is out of range"
                if encoder_count is not None and not 0 <= encoder_count <= MAX_EPOCH_NS else None)
            or (None if not station or STATION_NAME.fullmatch(station) else f"{H_STATION} {station[:40]!r} is not a station name")
            or (f"{H_FRAME_ID} {frame_id} is out of range" if frame_id is not None and frame_id < 0 else None)
            or (f"{H_CAMERA_TS} {camera_ts_ns} is out of range" if camera_ts_ns is not None and camera_ts_ns < 0 else None)
            or (None if purpose in PURPOSES else f"{H_PURPOSE} {purpose[:40]!r} is not one of {PURPOSES[1:]}")
        )
        if problem:
            raise MessageError(problem)
        return cls(
            unit_id=values[H_UNIT],
            line=values[H_LINE],
            camera=values[H_CAMERA],
            product=product,
            capture_ns=capture_ns,
            content_type=content_type,
            lot=values.get(H_LOT, ""),
            encoder_count=encoder_count,
            station=station,
            frame_id=frame_id,
            camera_ts_ns=camera_ts_ns,
            purpose=purpose,
        )


def _header_int(values: Mapping[str, str], name: str) -> int | None:
    """An integer header (None when absent); short decimal digits only, so a 10 kB number is
    refused before `int` parses it."""
    text = values.get(name, "").strip()
    if not text:
        return None
    if not re.fullmatch(r"-?[0-9]+", text[:100]):
        raise MessageError(f"{name} is not an integer: {text[:40]!r}")
    if len(text) > 20:
        raise MessageError(f"{name} {text[:24]}... is out of range ({len(text)} digits)")
    return int(text)


def check_image_bytes(data: bytes | None) -> None:
    """Cheap signature check so obviously broken frames never reach Triton."""
    if not data:
        raise MessageError("empty frame")
    if not (data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff")):
        raise MessageError("frame is neither PNG nor JPEG")


_J = TypeVar("_J", bound="JsonMessage")


@dataclass(frozen=True)
class JsonMessage:
    """Base of the JSON messages: one contract per type, checked on both ends.

    `SCHEMA_VERSION` is the version of the type's fields (``docs/schemas/<name>.v<N>.json``,
    written by ``linesight schemas export``); every message carries it as ``schema_version``.
    Change a field, bump it: tests/unit/test_message_contracts.py fails until both are done.
    `to_json` refuses (`MessageError`) to write what `from_json` would refuse to read."""

    SCHEMA_VERSION: ClassVar[int] = 1

    def to_json(self) -> bytes:
        doc = asdict(self)
        problem = document_problem(type(self), doc)
        if problem:
            raise MessageError(f"refusing to publish {problem}")
        try:
            return json.dumps({SCHEMA_VERSION_FIELD: self.SCHEMA_VERSION} | doc, separators=(",", ":"),
                              allow_nan=False).encode()
        except (TypeError, ValueError) as exc:  # a value JSON cannot hold (set, bytes, ...)
            raise MessageError(f"refusing to publish {type(self).__name__}: {exc}") from None

    @classmethod
    def from_json(cls: type[_J], data: bytes | str | None) -> _J:
        if not data:
            raise MessageError(f"empty {cls.__name__}")
        if not isinstance(data, (bytes, str)):
            raise MessageError(f"{cls.__name__} must be bytes or text, got {type(data).__name__}")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise MessageError(f"{cls.__name__} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise MessageError(f"{cls.__name__} must be a JSON object")
        version = doc.pop(SCHEMA_VERSION_FIELD, UNVERSIONED_SCHEMA_VERSION)
        if isinstance(version, bool) or version != cls.SCHEMA_VERSION:
            raise MessageError(
                f"{cls.__name__} schema_version {repr(version)[:40]} is not {cls.SCHEMA_VERSION}, the only "
                f"version this reader knows (docs/schemas/{schema_name(cls)}.v{cls.SCHEMA_VERSION}.json)")
        problem = document_problem(cls, doc)
        if problem:
            raise MessageError(problem)
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in doc.items() if k in names})
        except TypeError as exc:
            raise MessageError(f"bad {cls.__name__}: {exc}") from None


def schema_name(cls: type) -> str:
    """A message type's schema name: ``InspectionResult`` -> ``inspection-result``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower()


def document_problem(cls: type, doc: Mapping[str, Any]) -> str | None:
    """Why the JSON object `doc` is not a valid `cls` message (None when it is): the one check of
    the contract, run by `JsonMessage.to_json` before publishing and by `from_json` on receipt.

    Every required field present; each present field of its declared type (`_type_problem`);
    strings bounded (identity fields by ``MAX_TEXT_CHARS``, others by ``MAX_STRING_CHARS``); a
    usable unit id; ``*_ns`` integers are epoch-ns times (0 allowed: "not yet"). Fields the type
    does not declare are ignored (docs/integration.md)."""
    required = sorted(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    )
    missing = [name for name in required if name not in doc]
    if missing:
        return f"{cls.__name__} misses {', '.join(missing)}"
    hints = _field_types(cls)
    for f in fields(cls):
        if f.name not in doc:
            continue
        value = doc[f.name]
        problem = _type_problem(value, hints.get(f.name, Any))
        if problem is None and f.name == "unit_id":
            problem = unit_id_problem(value)
        elif problem is None and f.name in SHORT_TEXT_FIELDS and isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            problem = f"{len(value)} characters (at most {MAX_TEXT_CHARS})"
        elif problem is None and f.name.endswith("_ns") and isinstance(value, int):
            problem = None if 0 <= value <= MAX_EPOCH_NS else f"{value} is not an epoch-ns time"
        if problem:
            return f"bad {cls.__name__}.{f.name}: {problem}"
    return None


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    """A message class's resolved field types (the annotations are strings here), once."""
    if cls not in _FIELD_TYPES:
        _FIELD_TYPES[cls] = get_type_hints(cls)
    return _FIELD_TYPES[cls]


def _text_problem(value: str) -> str | None:
    """An over-long string, or one no UTF-8 holds (a lone surrogate: a valid JSON escape, yet the
    ClickHouse insert, the audit hash and every UTF-8 writer downstream would fail on it)."""
    if len(value) > MAX_STRING_CHARS:
        return f"{len(value)} characters (at most {MAX_STRING_CHARS})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 text (a lone surrogate)"
    return None


def _json_value_problem(value: object) -> str | None:
    """Why a free-form JSON value (a field typed `object`: a recipe, a part) is unusable: a
    non-finite number or an over-long string anywhere in it (None when fine)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, dict):
        return next((f"[{str(k)[:40]!r}] {p}" for k, v in value.items()
                     if (p := _json_value_problem(k) or _json_value_problem(v))), None)
    if isinstance(value, (list, tuple)):
        return next((f"[{i}] {p}" for i, v in enumerate(value) if (p := _json_value_problem(v))), None)
    return None


def _type_problem(value: object, hint: Any) -> str | None:
    """Why a decoded JSON `value` does not fit the field type `hint` (None when it does).

    Strict where a wrong type would surface later as a crash: bool is not an int, ints are
    int64, floats are finite (JSON's NaN/Infinity extensions are refused)."""
    origin = get_origin(hint)
    if hint is Any or hint is object:
        return _json_value_problem(value)
    if origin is Literal:
        return None if value in get_args(hint) else f"{str(value)[:40]!r} is not one of {get_args(hint)}"
    if origin in (Union, types.UnionType):
        problems = [_type_problem(value, arm) for arm in get_args(hint)]
        return None if None in problems else " or ".join(p for p in problems if p)
    if hint is type(None):
        return None if value is None else "not null"
    if hint is bool:
        return None if isinstance(value, bool) else f"{type(value).__name__} is not a boolean"
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{type(value).__name__} is not an integer"
        return None if -MAX_EPOCH_NS - 1 <= value <= MAX_EPOCH_NS else "integer out of int64 range"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{type(value).__name__} is not a number"
        return None if math.isfinite(value) and abs(value) < 1e308 else f"{value} is not a finite number"
    if hint is str:
        if not isinstance(value, str):
            return f"{type(value).__name__} is not a string"
        return _text_problem(value)
    if origin is dict:
        if not isinstance(value, dict):
            return f"{type(value).__name__} is not an object"
        key, item = get_args(hint)
        return next((f"[{str(k)[:40]!r}] {p}" for k, v in value.items()
                     if (p := _type_problem(k, key) or _type_problem(v, item))), None)
    if origin is list:
        if not isinstance(value, list):
            return f"{type(value).__name__} is not a list"
        (item,) = get_args(hint)
        return next((f"[{i}] {p}" for i, v in enumerate(value) if (p := _type_problem(v, item))), None)
    return None  # a type this check does not know: the dataclass takes it as is


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
    # The station whose frame this judges ("" on a one-camera line); see `UnitVerdict`.
    station: str = ""
    # The frame's purpose (`H_PURPOSE`): "challenge" units never count as production.
    purpose: str = ""
    # Where the judged frame is on the broker (``topic:partition:offset``): the review station reads
    # it back while the topic keeps it, and checks it against `image_sha256`.
    frame_source: str = ""


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
    purpose: str = ""  # the unit's frame purpose ("challenge": not production)


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
    purpose: str = ""  # "challenge" for a challenge set's unit (not production)


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
class CameraStatus(JsonMessage):
    """One station camera's health, from the camera gateway (``linesight.camera-status``, keyed by
    camera serial): every ``STATUS_INTERVAL_S`` and at once when the camera is lost or back.

    Counters are cumulative since the gateway started, so a lost message costs nothing and the
    alert service takes rates over any window it wants (docs/cameras.md, "Alerts and dashboard").
    """

    line: str
    station: str
    camera: str  # serial number
    connected: bool
    frames: int  # frames the camera delivered, complete or not
    units: int  # units the line's trigger point gave an id (the rate the camera must keep)
    fps: float  # frames per second over the last second
    units_per_s: float  # the line's units per second over the same second
    incomplete: int  # incomplete frames (tracker)
    missing: int  # units that left this station's window with no frame
    unexpected: int  # good frames in no unit's window
    reconnects: int
    last_frame_ns: int  # host time of the last frame's arrival, 0 before the first
    # The largest interval between consecutive camera timestamps since the last status, and what
    # it should have been: the time the belt took then to move one unit pitch (0: not measured).
    ts_gap_ns: int
    expected_gap_ns: int
    sent_ns: int
    running: bool = True  # False: the gateway's last status as it stops (the camera is no longer watched)

    def __post_init__(self) -> None:
        problem = (
            text_problem("line", self.line) or text_problem("camera", self.camera)
            or (None if STATION_NAME.fullmatch(self.station) else f"station {self.station[:40]!r} is not a station name")
            or next((f"{n} {getattr(self, n)} is negative" for n in ("frames", "units", "fps", "units_per_s",
                     "incomplete", "missing", "unexpected", "reconnects") if getattr(self, n) < 0), None)
        )
        if problem:
            raise MessageError(f"bad CameraStatus: {problem}")


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
    purpose: str = ""  # the admitted frame's purpose ("challenge": not production)


@dataclass(frozen=True)
class UnitVerdict(JsonMessage):
    """A multi-station unit's one verdict (topic ``linesight.unit-verdicts``, keyed by unit id):
    published by the actuator once per unit, when the gate decided its fate (docs/actuation.md).

    verdict: pass (every declared station passed and the gate released it), review (the worst
    station verdict is review, all present) or reject. cause: as the gate event's (model, late,
    failsafe). stations: one entry per station result received, in the line's station order:
    {station, verdict, score, defect, model_version, camera}; missing: declared stations with no
    result by the cutoff.
    """

    unit_id: str
    line: str
    lot: str
    product: str
    verdict: Verdict
    cause: str
    decided_ns: int
    stations: list[dict[str, str | float | None]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    reason: str = ""


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


def header_purpose(headers: Headers | None) -> str:
    """A frame's purpose even when its other metadata is broken: a known value or "" (production).

    A fail-safe rejected challenge unit stays a challenge unit; an unknown value counts as
    production, so nothing is ever left out of production counts by a bad header."""
    value = header_value(headers, H_PURPOSE)
    return value if value in PURPOSES else ""
