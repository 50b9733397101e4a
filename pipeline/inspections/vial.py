"""Vial inspection (side view, backlit): fill level, stopper, crimp cap, visible particles.

`measure_vial` runs inside Triton (model ``vial_inspector``) and reports what the frame shows;
`judge_vial` runs in the worker and applies the line recipe's `VialParams` to it. The
measurement works on transmittance (frame / backlight), so the panel's level and gradient
drop out, and in the vial's own frame of reference (the camera's roll is read off the
conveyor edge, which the vial stands on), so:

- fill: the meniscus is the darkest thin line in the liquid column's centre; its height above
  the conveyor edge minus the glass bottom is the fill from the inner bottom (sub-pixel fit);
- stopper: the rubber plug makes the neck bore opaque (an empty bore is bright glass);
- cap: crimp aluminium shows specular highlights under the front light, rubber and glass don't;
- particles: dark or bright blobs in the liquid against its column-wise profile.

Only numpy, PIL and OpenCV (`pipeline.inspections.cvops`): this module is imported by Triton's
python backend stub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from pydantic import ConfigDict, Field, model_validator

from pipeline.inspections.base import InspectionParams, Judgement, Measurement, Value
from pipeline.inspections.cvops import channel_mean_max, group_sizes

if TYPE_CHECKING:  # the renderer is not needed (nor imported) inside Triton
    from pipeline.imaging.vials import VialSpec

_SIDE_BAND_PX = 8  # background columns at each frame side (the vial never reaches them)
_MIN_FRAME_PX = 64


class VialParams(InspectionParams):
    """The recipe's vial section. Heights are mm along the vial axis from the inner bottom."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    mm_per_px: float = Field(gt=0.0, description="camera scale at the vial axis")
    nominal_fill_mm: float = Field(gt=0.0, description="fill height the filler aims at")
    fill_tolerance_mm: float = Field(gt=0.0, description="reject when |fill - nominal| exceeds it")
    bottom_mm: float = Field(default=1.0, ge=0.0, description="glass bottom thickness")
    wall_mm: float = Field(default=1.0, gt=0.0, lt=5.0, description="glass wall thickness")
    require_stopper: bool = True
    require_cap: bool = True
    max_particles: int = Field(default=0, ge=0)
    # Detection thresholds (transmittance = frame / backlight, 0..1).
    stopper_max_transmittance: float = Field(default=0.45, gt=0.0, lt=1.0)
    cap_min_brightness: float = Field(default=0.45, gt=0.0, lt=2.0)
    meniscus_min_contrast: float = Field(default=0.12, gt=0.0, lt=1.0)
    particle_min_contrast: float = Field(default=0.07, gt=0.0, lt=1.0)
    particle_min_area_px: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> VialParams:  # not typing.Self: the Triton image's stub runs Python 3.10
        if self.fill_tolerance_mm >= self.nominal_fill_mm:
            raise ValueError(
                f"fill_tolerance_mm ({self.fill_tolerance_mm}) must be below nominal_fill_mm ({self.nominal_fill_mm})"
            )
        if self.bottom_mm >= self.nominal_fill_mm:
            raise ValueError(f"bottom_mm ({self.bottom_mm}) must be below nominal_fill_mm ({self.nominal_fill_mm})")
        return self


def measure_vial(rgb: np.ndarray, params: VialParams) -> Measurement:
    """Measure one side-view frame (uint8 [H, W, 3]). ValueError when it is unusable or holds no vial."""
    grey, value = _grey(_check_frame(rgb))
    belt_row, tilt = _conveyor_edge(grey)
    t = _rotate(_transmittance(grey, belt_row, tilt), tilt, belt_row)
    v = _rotate(_transmittance(value, belt_row, tilt), tilt, belt_row)
    s = params.mm_per_px
    left, right = _body_walls(t, belt_row, s)
    xc, body_w = (left + right) / 2.0, right - left
    widths = _silhouette_widths(t, xc, body_w)
    shoulder, neck_lo, neck_hi, top = _profile_rows(widths, belt_row, body_w, s)
    bottom = belt_row - params.bottom_mm / s  # inner bottom, row coordinate
    inner_half = body_w / 2.0 - params.wall_mm / s

    meniscus, contrast = _meniscus_row(t, xc, inner_half, bottom - 0.5 / s, shoulder - 0.3 / s)
    found = contrast >= params.meniscus_min_contrast
    fill = max(0.0, (bottom - meniscus) * s) if found else 0.0
    neck = _neck_transmittance(t, xc, neck_lo, neck_hi, widths)
    cap = _cap_brightness(v, xc, neck_hi, top, widths)
    particles = 0
    if found:
        particles = _count_particles(t, xc, inner_half - 0.4 / s, bottom - 0.8 / s, meniscus + 0.8 / s, params)
    values: dict[str, Value] = {
        "fill_mm": round(fill, 3),
        "fill_pct": round(100.0 * fill / params.nominal_fill_mm, 2),
        "meniscus_found": bool(found),
        "stopper_present": bool(neck < params.stopper_max_transmittance),
        "cap_present": bool(cap > params.cap_min_brightness),
        "particles": particles,
        "neck_transmittance": round(neck, 3),
        "cap_brightness": round(cap, 3),
        "tilt_deg": round(float(-np.rad2deg(tilt)), 2),  # camera roll, counter-clockwise positive
        "height_mm": round((belt_row - top) * s, 2),
    }
    return Measurement(values=values)


def judge_vial(m: Measurement, params: VialParams) -> Judgement:
    """Apply the recipe: first failing check in the order missing-cap, missing-stopper,
    low-fill, high-fill, particles; one reason per failing check; fill numbers always reported."""
    fill = _number(m, "fill_mm")
    fill_pct = _number(m, "fill_pct")
    particles = int(_number(m, "particles"))
    cap, stopper = _flag(m, "cap_present"), _flag(m, "stopper_present")
    nom, tol = params.nominal_fill_mm, params.fill_tolerance_mm
    dev = fill - nom
    low = f"fill {fill:.2f} mm is {-dev:.2f} mm below nominal {nom:.2f} mm (tolerance {tol:.2f} mm)"
    if m.values.get("meniscus_found") is False:
        low = f"no liquid level found in the vial body (empty, or filled past the shoulder; tolerance {tol:.2f} mm)"
    checks: list[tuple[str, bool, str]] = [
        ("missing-cap", params.require_cap and not cap, "no crimp cap detected (cap required)"),
        ("missing-stopper", params.require_stopper and not stopper, "no stopper detected in the neck (stopper required)"),
        ("low-fill", dev < -tol, low),
        ("high-fill", dev > tol, f"fill {fill:.2f} mm is {dev:.2f} mm above nominal {nom:.2f} mm (tolerance {tol:.2f} mm)"),
        ("particles", particles > params.max_particles, f"{particles} visible particle(s) in the liquid (max {params.max_particles})"),
    ]
    failed = [(name, reason) for name, bad, reason in checks if bad]
    return Judgement(
        verdict="reject" if failed else "pass",
        defect=failed[0][0] if failed else "none",
        reasons=[reason for _, reason in failed],
        measurements={
            "fill_mm": round(fill, 3),
            "fill_pct": round(fill_pct, 2),
            "fill_dev_mm": round(dev, 3),
            "stopper_present": stopper,
            "cap_present": cap,
            "particles": particles,
        },
    )


# --------------------------------------------------------------------------- measurement steps


def _check_frame(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"frame must be a uint8 [H, W, 3] array, got {got}")
    if min(rgb.shape[:2]) < _MIN_FRAME_PX:
        raise ValueError(f"frame {rgb.shape[1]}x{rgb.shape[0]} is too small (min {_MIN_FRAME_PX} px a side)")
    return rgb


def _grey(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and max over the colour channels, 0..1."""
    return channel_mean_max(rgb)


def _conveyor_edge(grey: np.ndarray) -> tuple[float, float]:
    """Row of the conveyor's top edge at the frame's centre column and the camera roll (rad),
    from the half-way crossing (backlight to belt) in every side-band column, fitted as a line."""
    h, w = grey.shape
    b = _SIDE_BAND_PX
    level = float(np.percentile(grey[: h // 2, :b], 90))
    if level < 0.15:
        raise ValueError(f"no vial found: the backlight is off or the frame is dark (level {level:.2f})")
    cols = np.asarray([*range(1, b), *range(w - b, w - 1)])
    # All side-band columns at once; each step keeps the precision the per-column loop had
    # (medians in float32, levels in float64, the threshold compared in float32).
    prof = grey[:, cols]
    hi = np.median(prof[h // 2 - 30 : h // 2], axis=0).astype(np.float64)
    lo = np.median(prof[-4:], axis=0).astype(np.float64)
    half = 0.5 * (hi + lo)
    below = prof[h // 2 :] < half.astype(np.float32)
    usable = (hi - lo >= 0.25 * level) & below.any(axis=0)
    r = h // 2 + np.argmax(below, axis=0)
    k = np.flatnonzero(usable)
    p0 = prof[r[k] - 1, k].astype(np.float64)
    p1 = prof[r[k], k].astype(np.float64)
    xs = cols[k].tolist()
    ys = (r[k] - 1 + (p0 - half[k]) / np.maximum(p0 - p1, 1e-6)).tolist()
    if len(xs) < len(cols) // 2:
        raise ValueError("no vial found: no conveyor edge in the lower half of the frame")
    slope, icpt = np.polyfit(np.asarray(xs, np.float64), np.asarray(ys, np.float64), 1)
    resid = np.abs(np.polyval([slope, icpt], xs) - np.asarray(ys))
    if float(np.median(resid)) > 1.5 or abs(slope) > 0.1:
        raise ValueError("no vial found: the conveyor edge is not a straight line")
    return float(icpt + slope * (w - 1) / 2.0), float(np.arctan(slope))


def _transmittance(img: np.ndarray, belt_row: float, tilt: float) -> np.ndarray:
    """`img` divided by the backlight, interpolated per row between the frame's side bands;
    rows at and below the conveyor reuse the last row above it. 1 = free backlight."""
    h, w = img.shape
    b = _SIDE_BAND_PX
    last = int(belt_row - abs(np.tan(tilt)) * w / 2.0) - 3
    if last < h // 4:
        raise ValueError("no vial found: the conveyor edge is too high in the frame")
    left = np.median(img[:, :b], axis=1)
    right = np.median(img[:, -b:], axis=1)
    left[last:], right[last:] = left[last - 1], right[last - 1]
    frac = (np.arange(w, dtype=np.float32) - (b - 1) / 2.0) / (w - b)
    bg = left[:, None] + (right - left)[:, None] * frac[None, :]
    return img / np.maximum(bg, 1e-3)


def _rotate(img: np.ndarray, angle: float, row: float) -> np.ndarray:
    """Undo the camera roll about the conveyor edge's centre point: the edge becomes row `row`."""
    if abs(angle) < 1e-4:
        return img
    h, w = img.shape
    pil = Image.fromarray(img.astype(np.float32), mode="F")
    out = pil.rotate(float(np.rad2deg(angle)), resample=Image.Resampling.BILINEAR, center=((w - 1) / 2.0, row), fillcolor=1.0)
    return np.asarray(out, dtype=np.float32)


def _body_walls(t: np.ndarray, belt_row: float, s: float) -> tuple[float, float]:
    """Outer wall columns of the vial body (from 3 to 12 mm above the conveyor)."""
    r0, r1 = int(belt_row - 12.0 / s), int(belt_row - 3.0 / s)
    if r0 < 0 or r1 <= r0:
        raise ValueError("no vial found: the conveyor edge is too high in the frame for this mm_per_px")
    band = np.median(t[r0:r1], axis=0)
    dark = np.flatnonzero(band < 0.5)
    if len(dark) < 2 or (dark[-1] - dark[0]) * s < 3.0:
        raise ValueError("no vial found: no glass walls above the conveyor")
    if dark[0] <= _SIDE_BAND_PX + 2 or dark[-1] >= len(band) - _SIDE_BAND_PX - 3:
        raise ValueError("no vial found: the vial touches the frame's side (backlight reference) band")
    return _crossing(band, int(dark[0]), -1), _crossing(band, int(dark[-1]), +1)


def _crossing(prof: np.ndarray, i: int, step: int) -> float:
    """Sub-pixel position of the 0.5 crossing between dark sample i and its bright neighbour."""
    j = i + step
    if not 0 <= j < len(prof):
        return float(i)
    pi, pj = float(prof[i]), float(prof[j])
    return i + step * (0.5 - pi) / (pj - pi) if pj != pi else float(i)


def _silhouette_widths(t: np.ndarray, xc: float, body_w: float) -> np.ndarray:
    """Per row: width in px of the dark silhouette within the vial's column range (0: none)."""
    h, w = t.shape
    x0, x1 = max(int(xc - 0.65 * body_w), 0), min(int(xc + 0.65 * body_w) + 1, w)
    dark = t[:, x0:x1] < 0.5
    anyd = dark.any(axis=1)
    first = np.argmax(dark, axis=1)
    last = dark.shape[1] - 1 - np.argmax(dark[:, ::-1], axis=1)
    return np.where(anyd, last - first + 1, 0).astype(np.float32)


def _profile_rows(widths: np.ndarray, belt_row: float, body_w: float, s: float) -> tuple[float, int, int, int]:
    """Shoulder start, neck row range [lo, hi) and silhouette top, walking up from the body.

    The walk runs on Python floats (the same float64 comparisons numpy scalars made, at a
    tenth of their cost per row)."""
    widths = widths.tolist()
    start = int(belt_row - 6.0 / s)
    row = start
    while row > 0 and widths[row] > body_w - 0.4 / s:
        row -= 1
    shoulder = row
    while row > 0 and widths[row] > 0.8 * body_w:
        row -= 1
    neck_hi = row  # lowest neck row
    narrow = widths[row]
    while row > 0 and widths[row] > 0 and widths[row] < narrow + 1.0 / s:
        narrow = min(narrow, widths[row])
        row -= 1
    neck_lo = row + 1
    top = row
    while top > 0 and widths[top - 1] > 0.3 * body_w:
        top -= 1
    if shoulder <= 0 or neck_hi - neck_lo < 3 or top >= neck_lo:
        raise ValueError("no vial found: no body, neck and closure silhouette above the conveyor")
    if top <= 2:
        raise ValueError("no vial found: the vial's top is cut off by the frame's top edge")
    return float(shoulder), neck_lo, neck_hi + 1, top


def _meniscus_row(t: np.ndarray, xc: float, half: float, lo_row: float, hi_row: float) -> tuple[float, float]:
    """Row (sub-pixel) and contrast of the darkest thin horizontal line in the column's centre
    between rows hi_row (top) and lo_row (bottom)."""
    x0, x1 = int(round(xc - 0.35 * half)), int(round(xc + 0.35 * half)) + 1
    prof = t[:, x0:x1].mean(axis=1)
    k = 4
    top, bot = max(int(np.ceil(hi_row)), k + 1), min(int(lo_row), len(prof) - k - 2)
    if bot <= top:
        return float(lo_row), 0.0
    rows = np.arange(top, bot + 1)
    dip = 0.5 * (prof[rows - k] + prof[rows + k]) - prof[rows]
    i = int(rows[int(np.argmax(dip))])
    contrast = float(dip.max())
    # Parabola through the three samples around the minimum of the profile.
    a, b, c = float(prof[i - 1]), float(prof[i]), float(prof[i + 1])
    denom = a - 2.0 * b + c
    offset = 0.5 * (a - c) / denom if denom > 1e-9 else 0.0
    return i + float(np.clip(offset, -0.5, 0.5)), contrast


def _neck_transmittance(t: np.ndarray, xc: float, lo: int, hi: int, widths: np.ndarray) -> float:
    """Median transmittance of the neck bore's centre (rubber plug: dark; empty: glass-bright)."""
    half = 0.2 * float(np.median(widths[lo:hi]))
    rows = slice(lo + 1, max(lo + 1 + 2 * (hi - lo) // 3, lo + 2))  # upper part: clear of the shoulder
    cols = slice(int(round(xc - half)), int(round(xc + half)) + 1)
    return float(np.median(t[rows, cols]))


def _cap_brightness(v: np.ndarray, xc: float, neck_lo: int, top: int, widths: np.ndarray) -> float:
    """Brightest column (median over the closure's rows, so a few stray rows at its outline
    don't count) of the front-lit value inside the closure: aluminium streaks run its height."""
    rows = slice(top + 3, max(neck_lo - 2, top + 4))
    half = 0.5 * float(np.median(widths[rows])) - 3.0
    if half < 2.0:
        return 0.0
    cols = slice(int(round(xc - half)), int(round(xc + half)) + 1)
    return float(np.max(np.median(v[rows, cols], axis=0)))


def _count_particles(
    t: np.ndarray, xc: float, half: float, bottom: float, top: float, params: VialParams
) -> int:
    """Blobs that stand out of the liquid's profile; pixels within 2 px (Chebyshev) are one blob,
    so a fibre that fades in and out stays one particle."""
    r0, r1 = int(np.ceil(top)), int(bottom)
    c0, c1 = int(np.ceil(xc - half)), int(xc + half) + 1
    if r1 - r0 < 3 or c1 - c0 < 3:
        return 0
    roi = t[r0:r1, c0:c1]
    resid = roi - np.median(roi, axis=0, keepdims=True)
    resid -= np.median(resid, axis=1, keepdims=True)
    sigma = 1.4826 * float(np.median(np.abs(resid)))
    hot = np.abs(resid) > max(params.particle_min_contrast, 6.0 * sigma)
    return int((group_sizes(hot, 2) >= params.particle_min_area_px).sum())


def _number(m: Measurement, key: str) -> float:
    val = m.values.get(key)
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise ValueError(f"vial measurement lacks a number {key!r} (got {val!r})")
    return float(val)


def _flag(m: Measurement, key: str) -> bool:
    val = m.values.get(key)
    if not isinstance(val, bool):
        raise ValueError(f"vial measurement lacks a flag {key!r} (got {val!r})")
    return val


def default_params(spec: VialSpec) -> VialParams:
    """The recipe section a vial product's own specification implies (default thresholds)."""
    return VialParams(
        mm_per_px=spec.mm_per_px,
        nominal_fill_mm=spec.nominal_fill_mm,
        fill_tolerance_mm=spec.fill_tolerance_mm,
        bottom_mm=spec.bottom_mm,
        wall_mm=spec.wall_mm,
    )
