"""Blister packs: find the pack and its pocket grid, measure each pocket's content, judge it.

Measurement (Triton model ``blister_inspector``): the pack is the bright foil on the dark belt;
the minimum-area rectangle around its outline gives its rotation and centre (holes such as empty
pockets do not bias it), from which the recipe's grid (rows, cols, pitch) places every pocket. The pocket walls must then be where the grid says (a
recipe for another format fails loudly instead of measuring foil). In each pocket the tablet
is whatever differs from the pocket floor (the neutral foil seen through the film, taken from a
ring just inside the wall), segmented at a fixed fraction of its own contrast so white and coloured
tablets alike are cut at their edge. Per pocket it reports the tablet's area (fraction
of the pocket), its intensity-normalised colour and distance to the recipe's colour, solidity
(area over convex hull: splits and bites), roundness (area over the disc of its longest chord:
missing edge segments) and that longest chord relative to the recipe's tablet diameter (tablets
of another size or shape).

Judgement (worker): per pocket, in this order: empty-pocket (almost no tablet), foreign-tablet
(wrong colour), broken-tablet (split or bitten), foreign-tablet (wrong size or shape),
broken-tablet (too little of it or not round). The pack is rejected when any pocket is.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field, model_validator

from pipeline.inspections.base import InspectionParams, Judgement, Measurement, PartVerdict, Value
from pipeline.inspections.cvops import channel_mean, channel_sum, convex_hull, dilate, erode

EMPTY, BROKEN, FOREIGN = "empty-pocket", "broken-tablet", "foreign-tablet"
DEFECTS: tuple[str, ...] = (EMPTY, BROKEN, FOREIGN)

_COARSE_CONTRAST = 0.3  # pixel differs from the floor by 30 % of the floor's brightness
_EDGE_LEVEL = 0.3  # the tablet's edge: this fraction of its median contrast to the floor
_MIN_CORE_PX = 12  # fewer confident tablet pixels than this: nothing in the pocket
_WALL_MIN_CONTRAST = 0.04  # wall ring darker than the foil next to it by this (relative), on average


class BlisterParams(InspectionParams):
    """The recipe's blister section. Pixel sizes are at the line's fixed camera scale; the
    defaults are the recipe of ``blister-2x5-round-white``."""

    rows: int = Field(2, ge=1, le=20)
    cols: int = Field(5, ge=1, le=20)
    pocket_pitch_px: float = Field(56.0, gt=0)  # centre-to-centre, rows and columns
    pocket_diameter_px: float = Field(46.0, ge=12)
    tablet_diameter_px: float = Field(34.5, gt=0)  # longest dimension of a good tablet
    tablet_colour: tuple[int, int, int] = (228, 230, 226)  # RGB 0-255 as the camera sees it
    colour_tolerance: float = Field(16.0, gt=0, le=255)  # max intensity-normalised RGB distance
    min_tablet_area_frac: float = Field(0.47, gt=0, le=1)  # tablet area / pocket area
    empty_max_area_frac: float = Field(0.12, gt=0, le=1)  # below: the pocket counts as empty
    min_solidity: float = Field(0.94, gt=0, le=1)
    min_roundness: float = Field(0.885, gt=0, le=1)
    diameter_tolerance: float = Field(0.08, gt=0, lt=1)  # relative, on the longest dimension

    @model_validator(mode="after")
    def _consistent(self) -> BlisterParams:
        if any(not 0 <= c <= 255 for c in self.tablet_colour):
            raise ValueError(f"tablet_colour must be three integers in 0..255, got {self.tablet_colour}")
        if sum(self.tablet_colour) == 0:
            raise ValueError("tablet_colour must not be black (colour distance is intensity-normalised)")
        if self.pocket_diameter_px >= self.pocket_pitch_px:
            raise ValueError(
                f"pocket_diameter_px ({self.pocket_diameter_px}) must be smaller than pocket_pitch_px "
                f"({self.pocket_pitch_px}): pockets cannot overlap"
            )
        if self.tablet_diameter_px >= self.pocket_diameter_px:
            raise ValueError(
                f"tablet_diameter_px ({self.tablet_diameter_px}) must be smaller than pocket_diameter_px "
                f"({self.pocket_diameter_px})"
            )
        if self.empty_max_area_frac >= self.min_tablet_area_frac:
            raise ValueError(
                f"empty_max_area_frac ({self.empty_max_area_frac}) must be below min_tablet_area_frac "
                f"({self.min_tablet_area_frac})"
            )
        return self


# --------------------------------------------------------------------------- measurement


def measure_blister(rgb: np.ndarray, params: BlisterParams) -> Measurement:
    """Measure every pocket of the pack in `rgb` (HxWx3 uint8). ValueError when the pack or its
    pocket grid cannot be found, with the reason."""
    img = _as_float(rgb)
    lum = channel_mean(img)
    centre, angle, size = _find_pack(lum, params)
    centres = _pocket_centres(centre, angle, params)
    _check_grid(lum, centres, params)
    parts = [_measure_pocket(img, i, params, c) for i, c in enumerate(centres)]
    values: dict[str, Value] = {
        "pockets_found": len(parts),
        "pack_angle_deg": round(math.degrees(angle), 3),
        "pack_cx": round(float(centre[0]), 2),
        "pack_cy": round(float(centre[1]), 2),
        "pack_width_px": round(float(size[0]), 1),
        "pack_height_px": round(float(size[1]), 1),
    }
    return Measurement(values=values, parts=parts)


def _as_float(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got shape {a.shape} dtype {a.dtype}")
    return a[..., :3].astype(np.float32) / 255.0


def _otsu(values: np.ndarray) -> tuple[float, float]:
    """Otsu threshold of values in 0..1 and the separation of the two classes' means."""
    hist = np.bincount(np.clip((values * 255).astype(np.int32), 0, 255).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    total, mtotal = w0[-1], m0[-1]
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0, mu1 = m0 / w0, (mtotal - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1.0
    k = int(np.argmax(between))
    return (k + 0.5) / 255.0, float((mu1[k] - mu0[k]) / 255.0) if w1[k] > 0 and w0[k] > 0 else 0.0


def _morph(mask: np.ndarray, size: int, op: str) -> np.ndarray:
    """Binary erosion ('min') or dilation ('max') with a size x size square (OpenCV); outside
    the array counts as background for both (an object cut by the border erodes)."""
    return erode(mask, size) if op == "min" else dilate(mask, size)


def _find_pack(lum: np.ndarray, params: BlisterParams) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Centre (x, y), rotation (rad, of the pack's row direction) and (width, height) px."""
    h, w = lum.shape
    thr, separation = _otsu(lum)
    if separation < 0.15:
        raise ValueError(f"no blister pack found: the frame has no bright foil on a dark belt (contrast {separation:.2f})")
    mask = _morph(_morph(lum > thr, 5, "min"), 5, "max")
    frac = float(mask.mean())
    if not 0.1 <= frac <= 0.97:
        raise ValueError(f"no blister pack found: the bright region covers {frac:.0%} of the frame")
    hull = convex_hull(_row_extremes(mask))
    if len(hull) < 3:
        raise ValueError("no blister pack found: the bright region has no extent")
    # Minimum-area bounding rectangle: one of its sides lies along a hull edge.
    edges = np.roll(hull, -1, axis=0) - hull
    candidates = (np.arctan2(edges[:, 1], edges[:, 0]) + math.pi / 4) % (math.pi / 2) - math.pi / 4
    cos_t, sin_t = np.cos(candidates)[:, None], np.sin(candidates)[:, None]
    us = cos_t * hull[:, 0] + sin_t * hull[:, 1]
    vs = -sin_t * hull[:, 0] + cos_t * hull[:, 1]
    areas = np.ptp(us, axis=1) * np.ptp(vs, axis=1)
    best = int(np.argmin(areas))
    angle = float(candidates[best])  # the rows' direction, within +-45 deg of the frame's x axis
    c, s = math.cos(angle), math.sin(angle)
    u0, u1 = float(us[best].min()) - 0.5, float(us[best].max()) + 0.5  # pixel centres -> edges
    v0, v1 = float(vs[best].min()) - 0.5, float(vs[best].max()) + 0.5
    uc, vc = 0.5 * (u0 + u1), 0.5 * (v0 + v1)
    centre = np.array([c * uc - s * vc, s * uc + c * vc])
    size = (u1 - u0, v1 - v0)
    grid_w = (params.cols - 1) * params.pocket_pitch_px + params.pocket_diameter_px
    grid_h = (params.rows - 1) * params.pocket_pitch_px + params.pocket_diameter_px
    if size[0] < grid_w - 2 or size[1] < grid_h - 2:
        raise ValueError(
            f"pocket grid {params.rows}x{params.cols} at pitch {params.pocket_pitch_px:g} px needs "
            f"{grid_w:.0f}x{grid_h:.0f} px but the pack found is {size[0]:.0f}x{size[1]:.0f} px"
        )
    corners = [(c * a - s * b, s * a + c * b) for a in (u0, u1) for b in (v0, v1)]
    if any(x < 1 or y < 1 or x > w - 2 or y > h - 2 for x, y in corners):
        raise ValueError("blister pack is cut off by the frame edge")
    return centre, angle, size


def _pocket_centres(centre: np.ndarray, angle: float, params: BlisterParams) -> np.ndarray:
    """[rows*cols, 2] frame (x, y) of every pocket, row-major from the pack's top-left."""
    r, cidx = np.mgrid[0 : params.rows, 0 : params.cols]
    u = (cidx.ravel() - (params.cols - 1) / 2.0) * params.pocket_pitch_px
    v = (r.ravel() - (params.rows - 1) / 2.0) * params.pocket_pitch_px
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([centre[0] + c * u - s * v, centre[1] + s * u + c * v], axis=1)


def _ring_mean(lum: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Mean brightness on a circle of `radius` around each centre (nearest pixel, 48 samples)."""
    t = np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False)
    xs = np.rint(centres[:, :1] + radius * np.cos(t)).astype(np.int64)
    ys = np.rint(centres[:, 1:] + radius * np.sin(t)).astype(np.int64)
    h, w = lum.shape
    return lum[np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)].mean(axis=1)


def _check_grid(lum: np.ndarray, centres: np.ndarray, params: BlisterParams) -> None:
    """The pockets' walls must be where the grid puts them: the wall ring is darker than the foil
    just outside it. Fails when the recipe's format does not match the pack."""
    radius = params.pocket_diameter_px / 2.0
    wall = _ring_mean(lum, centres, radius)
    foil = _ring_mean(lum, centres, radius + 0.4 * (params.pocket_pitch_px - params.pocket_diameter_px))
    contrast = (foil - wall) / np.maximum(foil, 1e-3)
    if float(np.median(contrast)) < _WALL_MIN_CONTRAST:
        raise ValueError(
            f"pocket grid not found: no pocket walls where a {params.rows}x{params.cols} grid at pitch "
            f"{params.pocket_pitch_px:g} px puts them (wall contrast {float(np.median(contrast)):.3f})"
        )


def _measure_pocket(img: np.ndarray, index: int, params: BlisterParams, centre: np.ndarray) -> dict[str, Value]:
    """Segment and measure what lies in one pocket."""
    radius = params.pocket_diameter_px / 2.0
    h, w = img.shape[:2]
    px, py = float(centre[0]), float(centre[1])
    reach = int(math.ceil(radius)) + 1
    y0, y1 = max(int(py) - reach, 0), min(int(py) + reach + 2, h)
    x0, x1 = max(int(px) - reach, 0), min(int(px) + reach + 2, w)
    box = img[y0:y1, x0:x1]
    ys, xs = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
    r = np.sqrt((xs - px) ** 2 + (ys - py) ** 2)
    analysed = r <= radius - 3.0
    ring = (r >= radius - 6.0) & (r <= radius - 3.0)
    # The floor is the darker part of that ring: a tablet reaching into it and the wall's
    # reflection only brighten it.
    ring_px = box[ring]
    if len(ring_px) < 8:
        raise ValueError(f"pocket {index} lies outside the frame")
    ring_lum = channel_mean(ring_px)
    lo, hi = np.percentile(ring_lum, (10.0, 40.0))
    floor = ring_px[(ring_lum >= lo) & (ring_lum <= hi)].mean(axis=0)
    floor_lum = max(float(floor.mean()), 1e-3)
    diff = box - floor
    contrast = np.sqrt(channel_sum(diff * diff)) / floor_lum
    contrast[~analysed] = 0.0
    core = _morph(contrast > _COARSE_CONTRAST, 5, "min")
    part: dict[str, Value] = {
        "index": index,
        "row": index // params.cols,
        "col": index % params.cols,
        "cx": round(px, 2),
        "cy": round(py, 2),
    }
    empty = {
        "tablet_area_frac": 0.0,
        "colour_distance": 0.0,
        "colour_r": 0,
        "colour_g": 0,
        "colour_b": 0,
        "solidity": 0.0,
        "roundness": 0.0,
        "diameter_ratio": 0.0,
        "offset_px": 0.0,
    }
    if int(core.sum()) < _MIN_CORE_PX:
        return part | empty
    level = float(np.median(contrast[core]))
    mask = contrast > max(_COARSE_CONTRAST, _EDGE_LEVEL * level)
    opened = _morph(_morph(mask, 5, "min"), 5, "max")  # drops glints and crumbs narrower than 5 px
    mask &= _morph(opened, 3, "max")
    area = int(mask.sum())
    if area < _MIN_CORE_PX:
        return part | empty
    pocket_area = math.pi * radius * radius
    colour = np.median(box[core & mask], axis=0) if (core & mask).any() else np.median(box[mask], axis=0)
    expected = np.asarray(params.tablet_colour, dtype=np.float64)
    normalised = colour * 255.0 * expected.sum() / max(float(colour.sum()) * 255.0, 1e-6)
    # Shape on the mask with 1-2 px notches closed: where the score groove meets the darker rim
    # on the side away from the light it can dip below the edge level; a split's gap is wider.
    solidity, chord = _shape(mask | (_morph(_morph(mask, 3, "max"), 3, "min") & analysed))
    my, mx = np.nonzero(mask)
    return part | {
        "tablet_area_frac": round(area / pocket_area, 4),
        "colour_distance": round(float(np.linalg.norm(normalised - expected)), 2),
        "colour_r": int(round(float(normalised[0]))),
        "colour_g": int(round(float(normalised[1]))),
        "colour_b": int(round(float(normalised[2]))),
        "solidity": round(solidity, 4),
        "roundness": round(area / (math.pi * (chord / 2.0) ** 2), 4),
        "diameter_ratio": round(chord / params.tablet_diameter_px, 4),
        "offset_px": round(float(math.hypot(mx.mean() + x0 - px, my.mean() + y0 - py)), 2),
    }


def _shape(mask: np.ndarray) -> tuple[float, float]:
    """(solidity, longest dimension px) of a binary mask.

    The hull of the pixel centres (its row extremes suffice) is one pixel too small all round;
    as in Pick's theorem a convex digital shape has about area + perimeter/2 + 1 pixels, so
    solidity = pixels / (hull area + hull perimeter / 2 + 1) is ~1 for any convex shape, and
    the longest dimension is the hull's diameter + 0.5 px (calibrated on rendered discs)."""
    hull = convex_hull(_row_extremes(mask))
    if len(hull) < 3:
        return 1.0, float(mask.any(axis=1).sum())
    x, y = hull[:, 0], hull[:, 1]
    nxt = np.arange(1, len(hull) + 1) % len(hull)  # the next vertex (np.roll by -1, without its overhead)
    hull_area = 0.5 * abs(float(np.dot(x, y[nxt]) - np.dot(y, x[nxt])))
    perimeter = float(np.sqrt(((hull - hull[nxt]) ** 2).sum(axis=1)).sum())
    diff = hull[:, None, :] - hull[None, :, :]
    longest = float(np.sqrt((diff**2).sum(axis=2)).max()) + 0.5
    return float(mask.sum()) / (hull_area + perimeter / 2.0 + 1.0), longest


def _row_extremes(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the first and last set pixel of every row: all a convex hull needs."""
    rows = np.nonzero(mask.any(axis=1))[0]
    sub = mask[rows]
    first = sub.argmax(axis=1)
    last = mask.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    return np.concatenate([np.stack([first, rows], 1), np.stack([last, rows], 1)]).astype(np.float64)


# --------------------------------------------------------------------------- judgement


def judge_blister(m: Measurement, params: BlisterParams) -> Judgement:
    """One verdict per pocket and the pack's: reject when any pocket fails."""
    if len(m.parts) != params.rows * params.cols:
        raise ValueError(
            f"measurement has {len(m.parts)} pockets but the recipe's grid is {params.rows}x{params.cols}"
        )
    verdicts = [_judge_pocket(p, params) for p in sorted(m.parts, key=lambda p: int(p["index"]))]
    bad = [v for v in verdicts if v.verdict != "pass"]
    measurements: dict[str, Value] = {
        "pockets_found": len(verdicts),
        "pockets_ok": len(verdicts) - len(bad),
        "pockets_bad": len(bad),
    }
    if "pack_angle_deg" in m.values:
        measurements["pack_angle_deg"] = m.values["pack_angle_deg"]
    return Judgement(
        verdict="reject" if bad else "pass",
        defect=bad[0].defect if bad else "none",
        reasons=[f"pocket {v.index}: {v.reason}" for v in bad],
        measurements=measurements,
        parts=verdicts,
    )


_PART_KEYS = ("index", "tablet_area_frac", "colour_distance", "colour_r", "colour_g", "colour_b", "solidity",
              "roundness", "diameter_ratio")


def _judge_pocket(p: dict[str, Value], params: BlisterParams) -> PartVerdict:
    missing = [k for k in _PART_KEYS if k not in p]
    if missing:
        raise ValueError(f"pocket record {p.get('index', '?')} lacks {', '.join(missing)}")
    index = int(p["index"])
    area = float(p["tablet_area_frac"])
    dist = float(p["colour_distance"])
    solidity, roundness, ratio = float(p["solidity"]), float(p["roundness"]), float(p["diameter_ratio"])
    tol = params.diameter_tolerance
    checks: list[tuple[bool, str, str]] = [
        (area < params.empty_max_area_frac, EMPTY,
         f"tablet area {area:.3f} of the pocket < {params.empty_max_area_frac:g} (empty)"),
        (dist > params.colour_tolerance, FOREIGN,
         f"colour ({p['colour_r']}, {p['colour_g']}, {p['colour_b']}) is {dist:.1f} from "
         f"{tuple(params.tablet_colour)} > {params.colour_tolerance:g}"),
        (solidity < params.min_solidity, BROKEN, f"solidity {solidity:.3f} < {params.min_solidity:g} (split or bitten)"),
        # Longer than the tablet, or a whole (round enough) smaller one: another product. A broken
        # piece of the right tablet still spans about its diameter.
        (ratio > 1.0 + tol or (ratio < 1.0 - tol and roundness >= 0.9 * params.min_roundness), FOREIGN,
         f"longest dimension {ratio:.2f} x the tablet's {params.tablet_diameter_px:g} px (tolerance +-{tol:g})"),
        (area < params.min_tablet_area_frac, BROKEN,
         f"tablet area {area:.3f} of the pocket < {params.min_tablet_area_frac:g}"),
        (roundness < params.min_roundness, BROKEN, f"roundness {roundness:.3f} < {params.min_roundness:g}"),
    ]
    for failed, defect, reason in checks:
        if failed:
            return PartVerdict(index=index, verdict="reject", defect=defect, reason=reason)
    return PartVerdict(index=index, verdict="pass", defect="none")
