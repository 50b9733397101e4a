"""The input space of a classifier version: what its product's frames looked like at training.

A classifier scores whatever it is shown; on a frame unlike anything it was trained on (another
product, a unit cut off by the frame edge, a blurred or badly lit frame) a low score means
nothing. So training records, per version, the range of a few cheap image descriptors of the
unit over the product's own training and validation images, each also under another session's
light, focus and position (`reference`), and the worker
compares every scored frame with the range of the version that scored it (`check`): a unit
outside it is not `pass` but `review` (docs/models.md, "Input-space check"). The reference is
part of the version (model card and the classifier config's `input_space` parameter, keyed by
version like `classes`), so it never changes after release and a deploy or rollback carries it.

Descriptors are computed on the model input itself (`pipeline.model.preprocess`), the same
tensor in training and serving. Only numpy here: the worker imports this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from pipeline.model.preprocess import PIXEL_MEAN, PIXEL_STD, Size, hw, prepare_image, prepare_pil

# Bumped whenever a descriptor's definition changes: a reference is only compared with
# descriptors of the method it was made with (else the check says so and judges nothing).
METHOD = 1
PARAM = "input_space"
# The unit: pixels whose colour differs from the frame border's (the belt) by more than an Otsu
# threshold of those differences (never less than this many grey levels).
MIN_CONTRAST = 12.0
# Allowed range: the training images' [min, max] widened on each side by this share of its
# span, and by at least the descriptor's floor (a span of ~0, e.g. no unit ever touched the edge).
MARGIN = 0.25
FLOORS: dict[str, float] = {
    "area": 0.01,  # share of the frame covered by the unit
    "elongation": 0.04,  # sqrt of the ratio of the silhouette's principal moments (1 = round)
    "offset": 0.03,  # centroid's distance from the frame centre / shorter side
    "edge": 0.01,  # share of the frame's outermost pixel ring that is unit (cut off)
    "red": 10.0,  # the unit's mean colour, 0..255
    "green": 10.0,
    "blue": 10.0,
    "background": 10.0,  # the border's (belt's) median grey level, 0..255
    "sharpness": 0.03,  # steepest grey step at 1 px / the unit's contrast with the belt
    "clipped": 0.02,  # share of the unit's pixels at the sensor's top (any channel >= 254)
}
DESCRIPTORS: tuple[str, ...] = tuple(FLOORS)
# Ranged on the product's own images only, never their session variants: a unit clipped by too
# much light hides a discoloration whatever light the version tolerates otherwise.
OWN_IMAGES_ONLY = frozenset({"clipped"})
# Another session, as the version's calibration variants vary it (docs/models.md): light gain,
# Gaussian blur sigma (px), whole-pixel shift (px). Inside the input space: the version is
# calibrated to tolerate them, so another day's light is no doubtful input.
SESSION_LIGHT = (0.75, 1.25)
SESSION_BLUR_MAX = 1.1
SESSION_SHIFT_MAX = 4


def _rgb(x: np.ndarray) -> np.ndarray:
    """Model input [3, H, W] (normalised) -> float RGB [H, W, 3] in 0..255."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] model input, got shape {x.shape}")
    return (np.asarray(x, dtype=np.float32).transpose(1, 2, 0) * PIXEL_STD + PIXEL_MEAN) * 255.0


def _otsu(values: np.ndarray) -> float:
    """The threshold that best splits `values` into two classes (Otsu 1979), on 128 bins."""
    hist, edges = np.histogram(values, bins=128)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * mids)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _percentile(values: np.ndarray, q: float) -> float:
    """np.percentile(values, q) (linear interpolation, NumPy's own arithmetic) from a partial
    sort of the two order statistics it needs: 8x cheaper than a full percentile per frame."""
    n = values.size
    pos = (q / 100.0) * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    part = np.partition(values, [lo, hi])
    a, b, t = float(part[lo]), float(part[hi]), pos - lo
    return b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t


def describe(x: np.ndarray) -> dict[str, float]:
    """The descriptors of one model input [3, H, W]; NaN where there is no unit to measure.

    The worker runs this on every scored frame: masked means and counts are products and
    counts over the whole frame rather than copies of the unit's pixels (same values)."""
    rgb = _rgb(x)
    h, w, _ = rgb.shape
    b = max(2, min(h, w) // 32)
    border = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                             rgb[b:-b, :b].reshape(-1, 3), rgb[b:-b, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((rgb - bg) ** 2).sum(axis=2))
    t = max(MIN_CONTRAST, _otsu(dist))
    mask = dist > t
    n = int(np.count_nonzero(mask))
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey = rgb @ luma
    bg_grey = float(bg @ np.array([0.299, 0.587, 0.114]))
    ring = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    out = {"area": n / (h * w), "edge": float(ring.mean()), "background": bg_grey}
    if n < 16:
        return out | {k: math.nan for k in ("elongation", "offset", "red", "green", "blue", "sharpness", "clipped")}
    ys, xs = np.nonzero(mask)
    cy, cx = float(ys.mean()), float(xs.mean())
    cov = np.cov(np.stack([ys, xs]).astype(np.float64))
    lo, hi = np.linalg.eigvalsh(cov)
    weights = mask.reshape(-1).astype(np.float64)
    colour = (weights @ rgb.reshape(-1, 3).astype(np.float64)) / n
    contrast = abs(float(colour @ luma.astype(np.float64)) - bg_grey)
    gx, gy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    step = _percentile(np.concatenate([gx.ravel(), gy.ravel()]), 99.5)
    return out | {
        "elongation": math.sqrt(hi / lo) if lo > 1e-9 else math.inf,
        "offset": math.hypot(cy - (h - 1) / 2, cx - (w - 1) / 2) / min(h, w),
        "red": float(colour[0]), "green": float(colour[1]), "blue": float(colour[2]),
        "sharpness": step / max(contrast, 1.0),
        "clipped": np.count_nonzero(mask & (rgb.max(axis=2) >= 254.0)) / n,
    }


def session_variant(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Model input x under another session's light, focus and position (pixels clipped to 0..255
    as a camera would)."""
    rgb = np.clip(np.round(_rgb(x) * rng.uniform(*SESSION_LIGHT)), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, SESSION_BLUR_MAX))))
    dy, dx = (int(v) for v in rng.integers(-SESSION_SHIFT_MAX, SESSION_SHIFT_MAX + 1, size=2))
    a = np.pad(np.asarray(img), ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
    h, w = rgb.shape[:2]
    return prepare_pil(Image.fromarray(np.ascontiguousarray(a[abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w])),
                       (h, w))


def describe_frame(data: bytes, size: Size) -> dict[str, float]:
    """The descriptors of an encoded frame at the model's input geometry (as Triton prepares
    it); ValueError when the bytes are no usable image."""
    return describe(prepare_image(data, size))


@dataclass(frozen=True)
class Reference:
    """One version's allowed range of each descriptor, from its product's training images."""

    ranges: dict[str, tuple[float, float]]
    input_hw: tuple[int, int]
    n_images: int
    method: int = METHOD
    observed: dict[str, tuple[float, float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method, "input_hw": list(self.input_hw), "n_images": self.n_images,
                             "ranges": {k: [_r(lo), _r(hi)] for k, (lo, hi) in self.ranges.items()}}
        if self.observed is not None:
            d["observed"] = {k: [_r(lo), _r(hi)] for k, (lo, hi) in self.observed.items()}
            d["session_variants"] = (f"each image also once under light x{SESSION_LIGHT[0]}-{SESSION_LIGHT[1]}, "
                                     f"blur sigma <= {SESSION_BLUR_MAX} px, shift <= {SESSION_SHIFT_MAX} px")
            d["margin"] = (f"observed [min, max] widened by {MARGIN:.0%} of its span on each side, at least "
                           "by the floor of each descriptor")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reference:
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in d["ranges"].items()}
        hw_ = d["input_hw"]
        return cls(ranges, (int(hw_[0]), int(hw_[1])), int(d.get("n_images", 0)), int(d.get("method", 0)))


def _r(v: float) -> float:
    return float(f"{v:.6g}")


def reference(inputs: Iterable[np.ndarray], input_hw: Size, session_seed: int | None = None) -> Reference:
    """The reference of a version from its product's model inputs (training + validation); with
    `session_seed`, each image also counts once under another session (`session_variant`).

    Images where a descriptor cannot be measured (no unit found) do not widen its range: such a
    training image is itself doubtful, and a reference must not accept "no unit".
    """
    rng = None if session_seed is None else np.random.default_rng([session_seed, 0x5E55])
    rows: list[tuple[bool, dict[str, float]]] = [
        r for x in inputs
        for r in ([(True, describe(x))] if rng is None else [(True, describe(x)), (False, describe(session_variant(x, rng)))])]
    if not rows:
        raise ValueError("no images to make an input-space reference from")
    ranges: dict[str, tuple[float, float]] = {}
    observed: dict[str, tuple[float, float]] = {}
    for name in DESCRIPTORS:
        v = np.array([r[name] for own, r in rows if own or name not in OWN_IMAGES_ONLY], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise ValueError(f"descriptor {name!r} could not be measured on any training image")
        lo, hi = float(v.min()), float(v.max())
        m = max(MARGIN * (hi - lo), FLOORS[name])
        observed[name], ranges[name] = (lo, hi), (lo - m, hi + m)
    return Reference(ranges, hw(input_hw), len(rows) // (1 if rng is None else 2), METHOD, observed)


@dataclass(frozen=True)
class Finding:
    """The check of one frame against one version's reference."""

    status: str  # "in" | "out" | "unchecked"
    reasons: tuple[str, ...] = ()
    values: Mapping[str, float] | None = None

    @property
    def doubtful(self) -> bool:
        return self.status == "out"

    def summary(self) -> str:
        return {"in": "within the version's input space", "out": "; ".join(self.reasons)}.get(
            self.status, "; ".join(self.reasons))


def check(ref: Reference | None, values: Mapping[str, float] | None, who: str) -> Finding:
    """`values` (describe) against `ref` (the reference of `who`, e.g. "tablet_classifier v2").

    No reference (a version trained before input-space references): unchecked, says so. A
    descriptor outside its range, or not measurable (no unit found): out, one reason each.
    """
    if ref is None:
        return Finding("unchecked", (f"no input-space reference in {who}",), values)
    if ref.method != METHOD:
        return Finding("unchecked", (f"{who}'s input-space reference is of method {ref.method}, this worker "
                                     f"measures method {METHOD}",), values)
    if values is None:
        return Finding("out", ("input space: the frame could not be measured",), None)
    reasons = []
    for name, (lo, hi) in ref.ranges.items():
        v = values.get(name, math.nan)
        if not lo <= v <= hi:  # NaN is never inside
            shown = "not measurable (no unit found)" if math.isnan(v) else f"{v:.4g}"
            reasons.append(f"input space: {name} {shown} outside [{lo:.4g}, {hi:.4g}] of {who}'s training images")
    return Finding("out" if reasons else "in", tuple(reasons), values)


def parse_param(raw: str | None) -> dict[int, Reference]:
    """The classifier config's `input_space` parameter: JSON {"<version>": reference}; a version
    whose entry does not parse has no reference (and is reported unchecked, never in)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    out: dict[int, Reference] = {}
    if isinstance(data, dict):
        for key, entry in data.items():
            try:
                out[int(key)] = Reference.from_dict(entry)
            except (AttributeError, KeyError, TypeError, ValueError, IndexError):
                continue
    return out
