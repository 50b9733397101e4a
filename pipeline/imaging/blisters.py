"""Top-view renderer of blister packs (clear thermoformed pockets on silver lidding foil).

One frame holds a whole pack, so one frame carries many units: every pocket has its own
ground truth (good, or one of `BLISTER_DEFECTS`). The nuisances a real top camera adds vary per
frame (pack position and rotation, belt, foil lot and sealing knurl, lighting gradient and
vignetting, exposure, white balance, the pockets' wall refraction and specular highlights, the
tablet's position, spin and tint in its pocket, blur, sensor noise), so a measurement tuned on
these frames has to measure the tablet, not a rendering shortcut.

Pocket index: row-major from the top-left pocket of the pack as it lies in the frame, 0-based.
A render is a pure function of the generator state: same seed, same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.imaging.products import PRODUCTS, TabletSpec
from pipeline.imaging.raster import (
    gaussian_blur,
    illumination,
    pixel_grid,
    sensor_noise,
    shift_px,
    smooth_noise,
    smoothstep,
)
from pipeline.imaging.scene import TabletGeometry
from pipeline.imaging.tablets import check_rates

BLISTER_DEFECTS: tuple[str, ...] = ("empty-pocket", "broken-tablet", "foreign-tablet")

# Belt materials (as in the tablet renderer) and the light tablets a mix-up brings in.
_BELTS: tuple[tuple[float, float, float], ...] = ((0.12, 0.13, 0.16), (0.10, 0.14, 0.12), (0.24, 0.24, 0.25))
_FOREIGN_COLOURS: tuple[tuple[float, float, float], ...] = (
    PRODUCTS["tablet-oval-yellow-14mm"].color,
    (0.92, 0.60, 0.66),  # pink
    (0.55, 0.72, 0.93),  # light blue
    (0.95, 0.62, 0.28),  # orange
    (0.58, 0.82, 0.52),  # green
)
# Near-white tints of a look-alike product (cream, rose, ivory): the subtle colour mix-up.
_OFF_WHITE_TINTS: tuple[tuple[float, float, float], ...] = ((1.0, 0.94, 0.80), (1.0, 0.85, 0.86), (1.0, 0.97, 0.76))


@dataclass(frozen=True)
class BlisterSpec:
    """One blister SKU as the top camera sees it (pixel sizes at the line's fixed camera scale)."""

    product: str
    tablet: TabletSpec  # the tablet each pocket holds (colour, shape, size in mm)
    rows: int
    cols: int
    pocket_pitch_px: float  # centre-to-centre, same along rows and columns
    pocket_diameter_px: float
    px_per_mm: float  # camera scale: tablet size in pixels = tablet mm * px_per_mm
    margin_px: float  # foil border between the outer pockets and the pack edge
    foil_color: tuple[float, float, float]  # linear 0..1 RGB of the lidding foil
    frame_size: tuple[int, int]  # (width, height) of the camera frame

    @property
    def tablet_diameter_px(self) -> float:
        return self.tablet.length_mm * self.px_per_mm

    @property
    def pack_size_px(self) -> tuple[float, float]:
        """(width, height) of the pack."""
        return (
            (self.cols - 1) * self.pocket_pitch_px + self.pocket_diameter_px + 2 * self.margin_px,
            (self.rows - 1) * self.pocket_pitch_px + self.pocket_diameter_px + 2 * self.margin_px,
        )

    @property
    def pockets(self) -> int:
        return self.rows * self.cols


BLISTER_PRODUCTS: dict[str, BlisterSpec] = {
    spec.product: spec
    for spec in (
        BlisterSpec(
            product="blister-2x5-round-white",
            tablet=PRODUCTS["tablet-round-white-10mm"],
            rows=2,
            cols=5,
            pocket_pitch_px=56.0,
            pocket_diameter_px=46.0,
            px_per_mm=3.4,
            margin_px=9.0,
            foil_color=(0.66, 0.67, 0.69),
            frame_size=(320, 176),
        ),
    )
}


def get_blister_spec(product: str) -> BlisterSpec:
    """The spec of blister `product`, or ValueError naming the ones that exist."""
    try:
        return BLISTER_PRODUCTS[product]
    except KeyError:
        raise ValueError(
            f"unknown blister product {product!r}; valid products: {', '.join(sorted(BLISTER_PRODUCTS))}"
        ) from None


def pocket_offsets(rows: int, cols: int, pitch: float) -> np.ndarray:
    """[rows*cols, 2] pocket centres (u right, v down) relative to the pack centre, row-major."""
    r, c = np.mgrid[0:rows, 0:cols]
    u = (c.ravel() - (cols - 1) / 2.0) * pitch
    v = (r.ravel() - (rows - 1) / 2.0) * pitch
    return np.stack([u, v], axis=1).astype(np.float64)


# --------------------------------------------------------------------------- public API


def render_blister(
    rng: np.random.Generator,
    product: str,
    pockets: list[str | None],
    subtle: bool = False,
) -> tuple[Image.Image, dict[str, Any]]:
    """Render one pack of `product` with pocket i holding `pockets[i]` (None = a good tablet).

    Returns the RGB frame and its ground truth: `pockets` (class or None per index), `subtle`,
    `looks` (what exactly each pocket shows, e.g. ``chord-cut``), `pocket_centres` ([x, y]
    frame px), `tablet_area_frac` (tablet material over pocket area), `pack_centre`,
    `pack_angle_deg`.
    """
    spec = get_blister_spec(product)
    pockets = list(pockets)
    if len(pockets) != spec.pockets:
        raise ValueError(f"{product} has {spec.pockets} pockets, got {len(pockets)} pocket classes")
    for i, p in enumerate(pockets):
        if p is not None and p not in BLISTER_DEFECTS:
            raise ValueError(f"pocket {i}: unknown defect {p!r}; valid: {', '.join(BLISTER_DEFECTS)} (or None)")
    w, h = spec.frame_size
    ys, xs = pixel_grid(h, w)

    light_az = np.deg2rad(225.0) + rng.uniform(-0.5, 0.5)
    light_el = np.deg2rad(rng.uniform(50.0, 65.0))
    light = np.array(
        [np.cos(light_el) * np.cos(light_az), np.cos(light_el) * np.sin(light_az), np.sin(light_el)]
    )
    pw, ph = spec.pack_size_px
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    cx = (w - 1) / 2.0 + rng.uniform(-6.0, 6.0)
    cy = (h - 1) / 2.0 + rng.uniform(-5.0, 5.0)
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dx, dy = xs - np.float32(cx), ys - np.float32(cy)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy

    img = _belt(rng, (h, w))
    pack_alpha = np.clip(0.5 - _rounded_rect_sdf(u, v, pw / 2.0, ph / 2.0, 5.0), 0.0, 1.0)
    foil = _foil(rng, spec, u, v)
    # Pack's drop shadow on the belt, then the pack.
    shadow = gaussian_blur(np.roll(pack_alpha, (2, 2), axis=(0, 1)), 2.5)
    img *= (1.0 - 0.45 * shadow)[..., None]
    img = img * (1.0 - pack_alpha[..., None]) + foil * pack_alpha[..., None]

    offsets = pocket_offsets(spec.rows, spec.cols, spec.pocket_pitch_px)
    centres = np.stack([cx + ca * offsets[:, 0] - sa * offsets[:, 1], cy + sa * offsets[:, 0] + ca * offsets[:, 1]], 1)
    plastic = (np.array([0.95, 0.97, 0.97]) * rng.uniform(0.93, 0.98)).astype(np.float32)
    floor_factor = rng.uniform(0.70, 0.78)
    looks: list[str] = []
    areas: list[float] = []
    radius = spec.pocket_diameter_px / 2.0
    for i, kind in enumerate(pockets):
        look, area = _render_pocket(rng, spec, img, foil, centres[i], kind, subtle, light, plastic, floor_factor)
        looks.append(look)
        areas.append(area / (np.pi * radius * radius))

    img *= illumination(rng, (h, w), vignetting=(0.05, 0.3))[..., None] * rng.uniform(0.80, 0.95)
    img *= rng.uniform(0.985, 1.015, 3)  # camera white balance
    img = gaussian_blur(img, rng.uniform(0.4, 0.8))
    img = sensor_noise(rng, img)
    pixels = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    truth = {
        "product": product,
        "pockets": pockets,
        "subtle": bool(subtle),
        "looks": looks,
        "pocket_centres": [[round(float(x), 3), round(float(y), 3)] for x, y in centres],
        "tablet_area_frac": [round(a, 5) for a in areas],
        "pack_centre": [round(float(cx), 3), round(float(cy), 3)],
        "pack_angle_deg": round(float(np.rad2deg(angle)), 4),
    }
    return Image.fromarray(pixels, mode="RGB"), truth


def sample_blister(
    rng: np.random.Generator,
    product: str,
    defect_rate: float,
    subtle_fraction: float = 0.33,
) -> tuple[Image.Image, str | None, dict[str, Any]]:
    """Draw one pack as the line makes it: defective with `defect_rate`, then 1-2 bad pockets
    (positions and classes uniform). Returns (frame, first bad pocket's class or None, truth)."""
    check_rates(defect_rate, subtle_fraction)
    spec = get_blister_spec(product)
    pockets: list[str | None] = [None] * spec.pockets
    subtle = False
    if rng.random() < defect_rate:
        bad = rng.choice(spec.pockets, size=int(rng.integers(1, 3)), replace=False)
        for i in bad:
            pockets[int(i)] = BLISTER_DEFECTS[int(rng.integers(len(BLISTER_DEFECTS)))]
        subtle = bool(rng.random() < subtle_fraction)
    img, truth = render_blister(rng, product, pockets, subtle)
    defect = next((p for p in pockets if p is not None), None)
    return img, defect, truth


# --------------------------------------------------------------------------- pack and lighting


def _rounded_rect_sdf(u: np.ndarray, v: np.ndarray, hw: float, hh: float, rc: float) -> np.ndarray:
    qx = np.abs(u) - (hw - rc)
    qy = np.abs(v) - (hh - rc)
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - rc


def _belt(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    color = (np.asarray(_BELTS[int(rng.integers(len(_BELTS)))]) * rng.uniform(0.85, 1.15)).astype(np.float32)
    texture = 1.0 + 0.06 * smooth_noise(rng, shape, 20.0) + 0.035 * smooth_noise(rng, shape, 1.5)
    return color * texture[..., None]


def _foil(rng: np.random.Generator, spec: BlisterSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Lidding foil: lot tint, brushed grain along the web, sealing knurl, slow waviness."""
    color = (np.asarray(spec.foil_color) * rng.uniform(0.93, 1.07) + rng.normal(0.0, 0.006, 3)).astype(np.float32)
    grain_pos = np.arange(-200.0, 200.0, 0.8, dtype=np.float32)
    grain = np.interp(v, grain_pos, rng.standard_normal(len(grain_pos)).astype(np.float32)).astype(np.float32)
    period = rng.uniform(2.6, 3.4)
    phase = rng.uniform(0.0, 2.0 * np.pi, 2)
    knurl = np.sin(2 * np.pi * (u + v) / period + phase[0]) * np.sin(2 * np.pi * (u - v) / period + phase[1])
    wave = smooth_noise(rng, u.shape, 30.0)
    texture = 1.0 + 0.012 * grain + rng.uniform(0.015, 0.03) * knurl + 0.03 * wave
    return color * texture[..., None]


# --------------------------------------------------------------------------- one pocket


def _render_pocket(
    rng: np.random.Generator,
    spec: BlisterSpec,
    img: np.ndarray,
    foil: np.ndarray,
    centre: np.ndarray,
    kind: str | None,
    subtle: bool,
    light: np.ndarray,
    plastic: np.ndarray,
    floor_factor: float,
) -> tuple[str, float]:
    """Paint pocket floor, tablet (or its absence), wall and highlights into `img` in place.

    Returns (look, tablet material area in px)."""
    radius = spec.pocket_diameter_px / 2.0
    reach = int(np.ceil(radius + 4))
    h, w = img.shape[:2]
    px, py = float(centre[0]), float(centre[1])
    y0, y1 = max(int(py) - reach, 0), min(int(py) + reach + 2, h)
    x0, x1 = max(int(px) - reach, 0), min(int(px) + reach + 2, w)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs - np.float32(px), ys - np.float32(py)
    r = np.sqrt(dx * dx + dy * dy)
    inside = np.clip(radius + 0.5 - r, 0.0, 1.0)

    box = img[y0:y1, x0:x1]
    floor = foil[y0:y1, x0:x1] * floor_factor * plastic
    # The cavity darkens towards the wall (the formed film is thinner and tilted there).
    floor *= (1.0 - 0.10 * smoothstep(0.6 * radius, radius, r))[..., None]

    look, tablet_rgb, alpha = _pocket_content(rng, spec, kind, subtle, dx, dy, light)
    alpha = alpha * inside
    # Soft contact shadow of the content on the floor, away from the light.
    sx, sy = -light[0] / light[2] * 1.2, -light[1] / light[2] * 1.2
    shadow = gaussian_blur(shift_px(alpha, sx, sy), 1.6)
    floor *= (1.0 - 0.12 * shadow)[..., None]
    content = floor * (1.0 - alpha[..., None]) + tablet_rgb * plastic * alpha[..., None]

    # Wall: refraction darkens a ring at the pocket edge; the dome's shoulder shows a crescent
    # reflection towards the light and a small glint on its top.
    ring = np.exp(-(((r - radius) / 1.4) ** 2))
    phi = np.arctan2(dy, dx)
    az = np.arctan2(light[1], light[0])  # the dome reflects the light on its side facing the source
    crescent = np.exp(-(((r - 0.95 * radius) / 1.1) ** 2)) * np.maximum(np.cos(phi - az), 0.0) ** 3
    gx = px + 0.45 * radius * np.cos(az) + rng.normal(0.0, 1.0)
    gy = py + 0.45 * radius * np.sin(az) + rng.normal(0.0, 1.0)
    glint = np.exp(-(((xs - gx) / rng.uniform(1.0, 1.6)) ** 2 + ((ys - gy) / rng.uniform(0.8, 1.2)) ** 2))
    out = box * (1.0 - inside[..., None]) + content * inside[..., None]
    out *= (1.0 - rng.uniform(0.22, 0.32) * ring)[..., None]
    out += (rng.uniform(0.25, 0.45) * crescent + rng.uniform(0.2, 0.45) * glint)[..., None]
    img[y0:y1, x0:x1] = out
    return look, float(alpha.sum())


def _pocket_content(
    rng: np.random.Generator,
    spec: BlisterSpec,
    kind: str | None,
    subtle: bool,
    dx: np.ndarray,
    dy: np.ndarray,
    light: np.ndarray,
) -> tuple[str, np.ndarray, np.ndarray]:
    """(look, lit RGB, coverage alpha) of whatever lies in the pocket, on the pocket's box."""
    t = spec.tablet
    scale = spec.px_per_mm * rng.uniform(0.985, 1.015)  # tablet size tolerance
    geom = TabletGeometry(t.shape, 0.5 * t.length_mm * scale, 0.5 * t.width_mm * scale)
    color = np.asarray(t.color) * rng.uniform(1.0 - t.color_jitter, 1.0 + t.color_jitter)
    color = color + rng.normal(0.0, t.color_jitter / 3.0, 3)
    scored = t.scored
    look = "good"
    cut: tuple[str, float, float, float] | None = None  # (kind, angle, a, b) of a break
    if kind == "empty-pocket":
        return _crumbs(rng, spec, color, dx, dy, light, subtle)
    if kind == "foreign-tablet":
        look, geom, color, scored = _foreign(rng, spec, geom, color, subtle)
    elif kind == "broken-tablet":
        look, cut = _break(rng, geom, subtle)
    slack = max(spec.pocket_diameter_px / 2.0 - geom.r_len - 3.5, 0.0)
    rho, ang = slack * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
    tx, ty = rho * np.cos(ang), rho * np.sin(ang)
    spin = rng.uniform(0.0, 2.0 * np.pi)
    inside = _tablet_inside(geom, dx - tx, dy - ty, spin, cut)
    alpha = np.clip(inside + 0.5, 0.0, 1.0)
    rgb = _shade_tablet(rng, inside, color, light, scored, dx - tx, dy - ty, spin, geom)
    return look, rgb, alpha


def _rotate(dx: np.ndarray, dy: np.ndarray, spin: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(spin), np.sin(spin)
    return c * dx + s * dy, -s * dx + c * dy


def _tablet_inside(
    geom: TabletGeometry, dx: np.ndarray, dy: np.ndarray, spin: float, cut: tuple[str, float, float, float] | None
) -> np.ndarray:
    """Distance into the (possibly broken) tablet, px; negative outside."""
    a, b = _rotate(dx, dy, spin)
    if cut is None:
        return -geom.sdf(a, b)
    what, cang, p1, p2 = cut
    n_a, n_b = np.cos(cang), np.sin(cang)
    along = a * n_a + b * n_b  # coordinate across the break line
    if what == "chord":  # everything beyond the chord at distance p1 from the centre is gone
        return np.minimum(-geom.sdf(a, b), p1 - along)
    if what == "notch":  # a round bite of radius p2 centred p1 from the centre
        bite = np.sqrt((a - p1 * n_a) ** 2 + (b - p1 * n_b) ** 2) - p2
        return np.minimum(-geom.sdf(a, b), bite)
    # "split": two halves pushed apart by p1 px along the break normal, each turned by +-p2 rad.
    halves = []
    for sign in (1.0, -1.0):
        ha, hb = a - sign * 0.5 * p1 * n_a, b - sign * 0.5 * p1 * n_b
        ra, rb = _rotate(ha, hb, sign * p2)
        side = sign * (ra * n_a + rb * n_b)
        halves.append(np.minimum(-geom.sdf(ra, rb), side))
    return np.maximum(halves[0], halves[1])


def _shade_tablet(
    rng: np.random.Generator,
    inside: np.ndarray,
    color: np.ndarray,
    light: np.ndarray,
    scored: bool,
    dx: np.ndarray,
    dy: np.ndarray,
    spin: float,
    geom: TabletGeometry,
) -> np.ndarray:
    """Lambert-lit biconvex face with a rounded edge, powder mottling and the score groove."""
    t = np.clip(inside / max(geom.r_w, 1.0), 0.0, 1.0)
    height = rng.uniform(0.16, 0.22) * geom.r_w * (1.0 - (1.0 - t) ** 2)
    height += 2.0 * (1.0 - np.exp(-np.maximum(inside, 0.0) / 1.6))
    occlusion = np.ones_like(inside)
    if scored:
        _, b = _rotate(dx, dy, spin)
        groove = np.exp(-((b / 1.1) ** 2)) * np.clip(inside / 2.0, 0.0, 1.0)
        height -= rng.uniform(1.0, 1.4) * groove
        occlusion -= rng.uniform(0.12, 0.22) * groove
    gy, gx = np.gradient(height)
    ndotl = (-gx * light[0] - gy * light[1] + light[2]) / np.sqrt(gx * gx + gy * gy + 1.0)
    ambient = 0.55
    shade = (ambient + (1.0 - ambient) * np.maximum(ndotl, 0.0) / light[2]) * occlusion
    mottling = 1.0 + 0.014 * smooth_noise(rng, inside.shape, 6.0) + 0.008 * smooth_noise(rng, inside.shape, 1.3)
    return np.clip(color, 0.0, 1.0).astype(np.float32) * (shade * mottling)[..., None]


def _break(
    rng: np.random.Generator, geom: TabletGeometry, subtle: bool
) -> tuple[str, tuple[str, float, float, float]]:
    """How a broken tablet is broken: subtle = a small edge fragment missing; obvious = half
    gone, a big bite, or split in two with a gap."""
    r = geom.r_w
    cang = rng.uniform(0.0, 2.0 * np.pi)
    if subtle:
        if rng.random() < 0.6:
            lost = rng.uniform(0.12, 0.20)  # area fraction of the missing edge segment
            return "chord-cut", ("chord", cang, _chord_for_area(lost) * r, 0.0)
        return "edge-bite", ("notch", cang, r * rng.uniform(0.95, 1.05), r * rng.uniform(0.45, 0.55))
    pick = rng.random()
    if pick < 0.4:
        return "half-missing", ("chord", cang, _chord_for_area(rng.uniform(0.40, 0.60)) * r, 0.0)
    if pick < 0.7:
        return "big-bite", ("notch", cang, r * rng.uniform(0.75, 0.95), r * rng.uniform(0.55, 0.75))
    return "split", ("split", cang, rng.uniform(3.0, 5.0), np.deg2rad(rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 8.0)))


def _chord_for_area(lost: float) -> float:
    """Distance of a chord from the centre (in radii) that cuts off `lost` of a disc's area."""
    d = np.linspace(-1.0, 1.0, 2001)
    segment = (np.arccos(d) - d * np.sqrt(1.0 - d * d)) / np.pi
    return float(np.interp(lost, segment[::-1], d[::-1]))


def _foreign(
    rng: np.random.Generator, spec: BlisterSpec, geom: TabletGeometry, color: np.ndarray, subtle: bool
) -> tuple[str, TabletGeometry, np.ndarray, bool]:
    """A tablet of another product: obvious = a coloured one; subtle = a near-white tint, a
    white oval, or a smaller white round one."""
    d = 2.0 * geom.r_len
    if not subtle:
        tint = np.asarray(_FOREIGN_COLOURS[int(rng.integers(len(_FOREIGN_COLOURS)))]) * rng.uniform(0.97, 1.03)
        if rng.random() < 0.3:
            oval = TabletGeometry("oval", 0.5 * d * rng.uniform(1.15, 1.22), 0.5 * d * rng.uniform(0.58, 0.68))
            return "coloured-oval", oval, tint, False
        return "coloured-round", geom, tint, bool(rng.random() < 0.5)
    pick = rng.random()
    if pick < 0.4:
        tint = np.asarray(_OFF_WHITE_TINTS[int(rng.integers(len(_OFF_WHITE_TINTS)))])
        return "off-white", geom, color * tint, True
    if pick < 0.7:
        oval = TabletGeometry("oval", 0.5 * d * rng.uniform(1.15, 1.22), 0.5 * d * rng.uniform(0.6, 0.7))
        return "white-oval", oval, color, False
    small = 0.5 * d * rng.uniform(0.74, 0.82)
    return "small-round", TabletGeometry("round", small, small), color, False


def _crumbs(
    rng: np.random.Generator,
    spec: BlisterSpec,
    color: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    light: np.ndarray,
    subtle: bool,
) -> tuple[str, np.ndarray, np.ndarray]:
    """An empty pocket; the subtle kind still holds a few crumbs of tablet powder."""
    alpha = np.zeros(dx.shape)
    if not subtle:
        return "empty", np.zeros((*dx.shape, 3)), alpha
    radius = spec.pocket_diameter_px / 2.0
    for _ in range(int(rng.integers(2, 6))):
        rho, ang = (radius - 6.0) * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        size = rng.uniform(1.2, 2.6)
        d = np.sqrt((dx - rho * np.cos(ang)) ** 2 + (dy - rho * np.sin(ang)) ** 2)
        alpha = np.maximum(alpha, np.clip(size + 0.5 - d, 0.0, 1.0))
    shade = 0.8 + 0.2 * light[2]
    return "crumbs", np.broadcast_to(np.clip(color, 0, 1) * shade, (*dx.shape, 3)).copy(), alpha
