"""The recipe file format and its validation (docs/recipes.md).

A recipe is a TOML file a person writes and QA approves; the worker only ever runs a recipe that
passed `parse_recipe`. Everything that can be wrong is reported together, each problem with the
key it concerns: unknown keys (a misspelt tolerance must not be silently ignored), missing
models, parameters a measurement cannot satisfy.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.core.aql import AQLS, LEVELS
from pipeline.inspections import kinds
from pipeline.inspections.base import InspectionParams, validation_problems
from pipeline.model.geometry import INVARIANCES
from pipeline.model.release import AcceptanceCriteria, default_acceptance

RECIPE_ID = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class RecipeError(ValueError):
    """A recipe that cannot run; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"recipe {source} refused: " + "; ".join(problems))


class InspectionSpec(BaseModel):
    """One inspection of a recipe: what to measure/classify, with which served model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    kind: str
    model: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$", description="Triton model the frame is sent to")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in kinds.KINDS:
            raise ValueError(f"unknown inspection kind {v!r}; known kinds: {', '.join(kinds.KINDS)}")
        return v


class AcceptanceLimits(BaseModel):
    """Acceptance criteria of a model version's validation (rates as fractions in [0, 1])."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_detection: float | None = Field(None, ge=0.0, le=1.0)
    max_false_reject: float | None = Field(None, ge=0.0, le=1.0)
    max_review: float | None = Field(None, ge=0.0, le=1.0)
    min_auroc: float | None = Field(None, ge=0.0, le=1.0)


class AcceptanceSpec(AcceptanceLimits):
    """`[acceptance]`: what a trained version of the product's classifier must show to be
    deployable (docs/recipes.md). Keys here apply to every training mode; `[acceptance.supervised]`
    and `[acceptance.good-only]` override them for one mode; anything not named keeps the mode's
    default (pipeline.model.release.DEFAULT_ACCEPTANCE)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    supervised: AcceptanceLimits | None = None
    good_only: AcceptanceLimits | None = Field(None, alias="good-only")

    def criteria(self, mode: str) -> AcceptanceCriteria:
        """The criteria a `mode` training is judged by: defaults, then these keys, then the mode's."""
        values = default_acceptance(mode).as_dict()
        per_mode = {"supervised": self.supervised, "good-only": self.good_only}.get(mode)
        for layer in (self, per_mode):
            if layer is not None:
                values |= {k: getattr(layer, k) for k in AcceptanceLimits.model_fields if getattr(layer, k) is not None}
        return AcceptanceCriteria(**values)


class ModelSpec(BaseModel):
    """`[model]`: what the product's classifier must know about how its units face the camera
    (pipeline.model.geometry, docs/recipes.md): the flips/turns under which a unit's image stays
    a plausible image of it, and the smallest defect (in frame pixels) the input must keep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    invariance: str | None = None
    smallest_defect_px: float | None = Field(None, gt=0.0, le=10000.0)

    @field_validator("invariance")
    @classmethod
    def _known_invariance(cls, v: str | None) -> str | None:
        if v is not None and v not in INVARIANCES:
            raise ValueError(f"unknown invariance {v!r}; known: {', '.join(INVARIANCES)}")
        return v


STATION = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class CameraFeatures(BaseModel):
    """`[station.camera]`: the GenICam features the gateway sets on the station's camera before
    acquiring (docs/cameras.md); a feature the camera lacks, or a value outside its range, stops
    the gateway with the feature's name. Unset: the camera's own setting is kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pixel_format: str = Field(default="Mono8", pattern=r"^[A-Za-z0-9_]{1,32}$")
    exposure_us: float | None = Field(default=None, gt=0.0, le=1e8)
    gain: float | None = Field(default=None, ge=0.0, le=1000.0)
    # Region of interest: offset x, offset y, width, height (sensor pixels).
    roi: tuple[int, int, int, int] | None = None
    # TriggerMode On with this TriggerSource ("Software" in tests, "Line0" wired to the line's
    # photo-eye in production), or "off": free-running (no unit identity; tests of the camera only).
    trigger_source: str = Field(default="Software", pattern=r"^(off|[A-Za-z0-9_]{1,32})$")
    codec: str = Field(default="png", pattern=r"^(png|jpeg)$", description="how frames are encoded for the broker")
    jpeg_quality: int = Field(default=95, ge=50, le=100)

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            raise ValueError(f"roi (x, y, width, height) needs x, y >= 0 and width, height > 0, got {list(v)}")
        return v


class StationSpec(BaseModel):
    """`[[station]]`: one camera view of the unit and the inspections judged on its frames. A
    recipe without stations has one implicit station running every inspection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=STATION)
    inspections: list[str] = Field(min_length=1, description="names of this recipe's [[inspection]] tables")
    camera: CameraFeatures = CameraFeatures()


SHA256_HEX = r"^[0-9a-f]{64}$"
# When in a lot a challenge run is made (`linesight challenge run --when`).
CHALLENGE_PHASES: tuple[str, ...] = ("start", "end")


class ChallengeSpec(BaseModel):
    """`[challenge]`: the recipe's challenge set and what a challenge run must show (docs/validation.md).

    `set` is the id the set was registered under (`linesight challenge register`), `sha256` its
    dataset hash: a set whose images or labels changed since the recipe was approved is refused.
    Defect units must all be rejected (not a setting: a challenge that lets one through is failed);
    good units removed are limited by a count or a fraction (not both; neither: none may be), good
    units sent to review by a fraction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    set: str = Field(pattern=RECIPE_ID)
    sha256: str = Field(pattern=SHA256_HEX, description="dataset hash of the set (lower-case hex)")
    every_defect_rejected: bool = True
    max_good_removed: int | None = Field(None, ge=0)
    max_good_removed_fraction: float | None = Field(None, ge=0.0, le=1.0)
    max_review_fraction: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("every_defect_rejected")
    @classmethod
    def _required(cls, v: bool) -> bool:
        if not v:
            raise ValueError("must be true: every defect unit of a challenge set has to be rejected")
        return v

    def good_removed_limit(self, good: int) -> int:
        """How many of `good` good units may be removed (rejected) in one run."""
        if self.max_good_removed_fraction is not None:
            return int(self.max_good_removed_fraction * good + 1e-9)
        return self.max_good_removed or 0

    def review_limit(self, good: int) -> int:
        """How many of `good` good units may be sent to review in one run."""
        return int(self.max_review_fraction * good + 1e-9)


class ReviewSpec(BaseModel):
    """`[review]`: how a lot's review units are decided by a person (docs/review.md).

    A lot whose share of review units exceeds `max_review_fraction` raises an alert and is flagged
    in its batch record (a line sending many units to people is a line to look at, and re-inspection
    must not become the way a lot gets through). With `qa_confirms`, an operator's "good" recovers a
    unit only once QA confirms it. The units recovered in a lot are sampled by ISO 2859-1 single
    sampling, normal inspection, at `aql_level` and `aql` (percent nonconforming)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_review_fraction: float = Field(default=0.02, gt=0.0, le=1.0)
    qa_confirms: bool = False
    aql_level: str = Field(default="II", description="ISO 2859-1 inspection level: S-1..S-4, I, II or III")
    aql: float = Field(default=0.65, description="one of ISO 2859-1's preferred AQLs, 0.010 to 10")

    @field_validator("aql_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v not in LEVELS:
            raise ValueError(f"{v!r} is not an ISO 2859-1 inspection level ({', '.join(LEVELS)})")
        return v

    @field_validator("aql")
    @classmethod
    def _preferred(cls, v: float) -> float:
        if not any(abs(v - a) < 1e-9 for a in AQLS):
            raise ValueError(f"{v:g} is not a preferred AQL of ISO 2859-1 ({', '.join(f'{a:g}' for a in AQLS)})")
        return v


class RecipeDoc(BaseModel):
    """The file as written (before the per-kind parameter check)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=RECIPE_ID)
    version: int = Field(ge=1)
    product: str = Field(min_length=1, max_length=128)
    description: str = ""
    inspection: list[InspectionSpec] = Field(min_length=1)
    acceptance: AcceptanceSpec | None = None
    model: ModelSpec | None = None
    station: list[StationSpec] | None = None
    challenge: ChallengeSpec | None = None
    review: ReviewSpec | None = None


class Recipe:
    """A validated recipe: its document, each inspection's typed parameters and a content hash."""

    def __init__(self, doc: RecipeDoc, params: dict[str, InspectionParams]) -> None:
        self.doc = doc
        self.params = params
        # What the measurement models receive as PARAMS with every frame: serialised once here.
        self.params_json = {name: p.model_dump_json().encode() for name, p in params.items()}
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        self.sha256 = hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def id(self) -> str:
        return self.doc.id

    @property
    def version(self) -> int:
        return self.doc.version

    @property
    def product(self) -> str:
        return self.doc.product

    @property
    def ref(self) -> str:
        """What every result carries: ``id@vN``."""
        return f"{self.doc.id}@v{self.doc.version}"

    @property
    def inspections(self) -> list[InspectionSpec]:
        return list(self.doc.inspection)

    def to_dict(self) -> dict[str, Any]:
        # A recipe without acceptance criteria or a [model] table keeps the content hash it had
        # before they existed.
        absent = {k for k in ("acceptance", "model", "station", "challenge", "review") if getattr(self.doc, k) is None}
        return self.doc.model_dump(mode="json", exclude=absent or None)

    @property
    def stations(self) -> list[StationSpec]:
        """The declared stations ([] for a one-camera recipe)."""
        return list(self.doc.station or [])

    def station(self, name: str) -> StationSpec | None:
        return next((s for s in self.stations if s.name == name), None)

    @property
    def review(self) -> ReviewSpec:
        """How the recipe's review units are decided (the defaults where it has no [review] table)."""
        return self.doc.review or ReviewSpec()

    def acceptance(self, mode: str) -> AcceptanceCriteria | None:
        """The acceptance criteria of a `mode` training of this product (None: the recipe names none)."""
        return None if self.doc.acceptance is None else self.doc.acceptance.criteria(mode)

    def __repr__(self) -> str:
        return f"Recipe({self.ref}, product={self.product!r}, sha256={self.sha256[:12]})"


def parse_recipe(data: dict[str, Any], source: str = "<recipe>", repository: Path | None = None) -> Recipe:
    """Validate a recipe document; with `repository`, every named model must exist in it."""
    try:
        doc = RecipeDoc.model_validate(data)
    except ValidationError as exc:
        # Report the models that are missing too, so one round of fixes is enough.
        raw = data.get("inspection") if isinstance(data, dict) else None
        missing = [
            f"inspection[{i}].model: no model {item['model']!r} in the model repository {repository}"
            for i, item in enumerate(raw if isinstance(raw, list) else [])
            if repository is not None and isinstance(item, dict) and isinstance(item.get("model"), str)
            and item["model"] and not (repository / item["model"] / "config.pbtxt").is_file()
        ]
        raise RecipeError(source, validation_problems(exc) + missing) from None
    problems: list[str] = []
    params: dict[str, InspectionParams] = {}
    seen_names: set[str] = set()
    seen_kinds: set[str] = set()
    for i, spec in enumerate(doc.inspection):
        where = f"inspection[{i}]"
        if spec.name in seen_names:
            problems.append(f"{where}.name: {spec.name!r} is used twice")
        if spec.kind in seen_kinds:
            problems.append(f"{where}.kind: a recipe runs each kind once ({spec.kind!r} twice)")
        seen_names.add(spec.name)
        seen_kinds.add(spec.kind)
        try:
            params[spec.name] = kinds.params_model(spec.kind).model_validate(spec.params)
        except ValidationError as exc:
            problems += validation_problems(exc, f"{where}.params")
        except ValueError as exc:
            problems.append(f"{where}.params: {exc}")
        if repository is not None and not (repository / spec.model / "config.pbtxt").is_file():
            problems.append(f"{where}.model: no model {spec.model!r} in the model repository {repository}")
    problems += _station_problems(doc)
    if doc.challenge is not None and doc.challenge.max_good_removed is not None \
            and doc.challenge.max_good_removed_fraction is not None:
        problems.append("challenge: give max_good_removed (a count) or max_good_removed_fraction, not both")
    if problems:
        raise RecipeError(source, problems)
    return Recipe(doc, params)


def _station_problems(doc: RecipeDoc) -> list[str]:
    """Stations name existing inspections, once each; with stations, every inspection has one."""
    if doc.station is None:
        return []
    problems: list[str] = []
    known = {spec.name for spec in doc.inspection}
    seen: set[str] = set()
    used: set[str] = set()
    for i, station in enumerate(doc.station):
        if station.name in seen:
            problems.append(f"station[{i}].name: {station.name!r} is used twice")
        seen.add(station.name)
        for name in station.inspections:
            if name not in known:
                problems.append(f"station[{i}].inspections: no [[inspection]] named {name!r} (known: {', '.join(sorted(known))})")
        used |= set(station.inspections)
    unused = sorted(known - used)
    if doc.station and unused:
        problems.append(f"station: inspections {', '.join(unused)} belong to no station (every inspection runs on one)")
    return problems


def load_recipe(path: Path, repository: Path | None = None) -> Recipe:
    """Read and validate one recipe file (TOML)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(str(path), [f"not valid TOML: {exc}"]) from None
    recipe = parse_recipe(data, str(path), repository)
    if re.sub(r"\.toml$", "", path.name) != recipe.id:
        raise RecipeError(str(path), [f"id {recipe.id!r} must match the file name ({recipe.id}.toml)"])
    return recipe
