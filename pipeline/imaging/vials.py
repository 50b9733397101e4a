"""Side-view renderer of stoppered, crimp-capped vials in front of a diffuse backlight.

Why: the vial inspection (fill level, stopper, crimp cap, particles) needs labelled frames with
a known fill height to measure against, and the simulated line needs vials to run. The camera
looks horizontally at a vial standing on a dark conveyor in front of a bright diffuse panel,
with a weak front light so opaque parts (rubber, aluminium) show their surface:

- glass walls refract the backlight away and show as dark bands at the silhouette's edges;
- the liquid column is a cylindrical lens (darker towards the walls) topped by the meniscus,
  a thin dark line at the liquid level whose ends curve up along the walls;
- the grey rubber stopper's plug shows through the glass neck, its flange sits on the vial lip;
- the aluminium crimp cap wraps the flange (skirt rolled under it) and shows metallic highlights.

Nuisances vary per frame: position, camera roll, scale (working distance), backlight level,
gradient and vignetting, front light, glass scuffs, blur, sensor noise and the natural fill
spread. The truth dict carries what a measurement must find; a render is a pure function of
the generator state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.imaging.raster import (
    add_spot,
    gaussian_blur,
    line_profile,
    pixel_grid,
    polyline_distance,
    random_walk,
    sensor_noise,
    smooth_noise,
)
from pipeline.imaging.tablets import draw_unit

VIAL_DEFECTS: tuple[str, ...] = ("low-fill", "high-fill", "missing-stopper", "missing-cap", "particles")

RGB = tuple[float, float, float]

# Fills of good units are truncated this far inside the tolerance (the filler's own weight
# check rejects beyond it); defects of the subtle kind lie this far outside it (0.3..0.6 mm).
_GOOD_MARGIN_MM = 0.3
_SUBTLE_OUTSIDE_MM = (0.3, 0.6)
_STOPPER_FLANGE_MM = 2.0
_CAP_TOP_MM = 0.3  # aluminium over the stopper flange (or the bare lip)
_SKIRT_MM = 0.8  # how far the crimp skirt reaches under the glass flange
_BUTTON_MM = 1.8  # flip-off button height


@dataclass(frozen=True)
class VialSpec:
    """Physical description of one vial SKU and how its inspection camera is set up."""

    product: str
    body_diameter_mm: float
    body_height_mm: float  # outer bottom to the start of the shoulder
    shoulder_mm: float
    neck_diameter_mm: float
    neck_height_mm: float
    flange_diameter_mm: float  # the lip the stopper sits on and the cap is crimped under
    flange_height_mm: float
    bore_mm: float  # inner diameter of neck and lip
    wall_mm: float
    bottom_mm: float  # glass bottom thickness: fill heights are from the inner bottom
    nominal_fill_mm: float
    fill_sd_mm: float
    fill_tolerance_mm: float
    liquid_tint: RGB  # per-channel transmission of the liquid
    stopper_color: RGB
    cap_color: RGB  # crimp aluminium
    button_color: RGB  # flip-off button
    mm_per_px: float
    frame_px: tuple[int, int] = (176, 320)  # width, height
    base_margin_px: int = 20  # conveyor rows below the vial

    @property
    def glass_height_mm(self) -> float:
        return self.body_height_mm + self.shoulder_mm + self.neck_height_mm + self.flange_height_mm

    @property
    def inner_radius_mm(self) -> float:
        return self.body_diameter_mm / 2.0 - self.wall_mm

    @property
    def max_fill_mm(self) -> float:
        """Highest level that stays in the cylindrical body with its meniscus."""
        return self.body_height_mm - self.bottom_mm - 1.5

    def fill_ml(self, fill_mm: float) -> float:
        """Liquid volume of a fill height in the cylindrical body."""
        return float(np.pi * self.inner_radius_mm**2 * fill_mm / 1000.0)


VIAL_PRODUCTS: dict[str, VialSpec] = {
    spec.product: spec
    for spec in (
        # 2R-like tubular vial (16 mm), ~4 ml filled; 13 mm stopper and crimp.
        VialSpec(
            product="vial-2r-clear-5ml",
            body_diameter_mm=16.0,
            body_height_mm=33.0,
            shoulder_mm=2.5,
            neck_diameter_mm=10.5,
            neck_height_mm=3.5,
            flange_diameter_mm=13.0,
            flange_height_mm=3.0,
            bore_mm=7.0,
            wall_mm=1.0,
            bottom_mm=1.0,
            nominal_fill_mm=26.0,
            fill_sd_mm=0.3,
            fill_tolerance_mm=1.0,
            liquid_tint=(0.97, 0.98, 0.98),
            stopper_color=(0.34, 0.34, 0.36),
            cap_color=(0.78, 0.79, 0.81),
            button_color=(0.20, 0.36, 0.78),
            mm_per_px=0.17,
        ),
        # 4R-like vial (16 mm, taller), ~3 ml of a pale yellow solution; red flip-off.
        VialSpec(
            product="vial-4r-yellow-3ml",
            body_diameter_mm=16.0,
            body_height_mm=36.0,
            shoulder_mm=2.5,
            neck_diameter_mm=10.5,
            neck_height_mm=3.5,
            flange_diameter_mm=13.0,
            flange_height_mm=3.0,
            bore_mm=7.0,
            wall_mm=1.0,
            bottom_mm=1.1,
            nominal_fill_mm=20.0,
            fill_sd_mm=0.3,
            fill_tolerance_mm=1.0,
            liquid_tint=(0.97, 0.93, 0.70),
            stopper_color=(0.30, 0.30, 0.31),
            cap_color=(0.80, 0.80, 0.82),
            button_color=(0.80, 0.18, 0.16),
            mm_per_px=0.185,
        ),
    )
}


def get_vial_spec(product: str) -> VialSpec:
    try:
        return VIAL_PRODUCTS[product]
    except KeyError:
        raise ValueError(f"unknown vial product {product!r}; known: {sorted(VIAL_PRODUCTS)}") from None


def check_vial_defect(defect: str | None) -> None:
    if defect is not None and defect not in VIAL_DEFECTS:
        raise ValueError(f"unknown vial defect {defect!r}; known: {list(VIAL_DEFECTS)} or None")


def render_vial(
    rng: np.random.Generator, product: str, defect: str | None, subtle: bool = False
) -> tuple[Image.Image, dict[str, float | int | bool | str | None]]:
    """Render one vial of `product` with `defect` (None: good unit); returns (RGB frame, truth).

    truth: fill_mm (inner bottom to the meniscus' lowest point), fill_pct (of nominal),
    stopper, cap (bools), particles (count), defect, subtle, tilt_deg, mm_per_px (true scale).
    """
    spec = get_vial_spec(product)
    check_vial_defect(defect)
    w, h = spec.frame_px
    scale = spec.mm_per_px * rng.uniform(0.9985, 1.0015)  # working distance varies a little
    tilt = rng.uniform(-1.5, 1.5)
    xc = (w - 1) / 2.0 + rng.uniform(-6.0, 6.0)
    yb = h - 1 - spec.base_margin_px + rng.uniform(-1.5, 1.5)
    u, z = _vial_coords(w, h, xc, yb, np.deg2rad(tilt), scale)

    fill = _draw_fill(rng, spec, defect, subtle)
    stopper = defect != "missing-stopper"
    cap = defect != "missing-cap"
    trans, albedo = _glass_and_liquid(rng, spec, u, z, scale, fill)
    n_particles = 0
    if defect == "particles":
        n_particles = int(rng.integers(1, 4))
        _paint_particles(rng, spec, u, z, scale, fill, trans, n_particles, subtle)
    # The closure only reaches down to the shoulder: model the rows above it (a third of the work).
    rows = int(np.flatnonzero((z > spec.body_height_mm - 1.0).any(axis=1)).max()) + 1
    _closure(rng, spec, u[:rows], z[:rows], scale, trans[:rows], albedo[:rows], stopper, cap)
    _belt(rng, z, scale, trans, albedo)

    backlight = _backlight(rng, w, h)
    front = rng.uniform(0.45, 0.55)
    img = backlight[..., None] * trans * np.asarray((1.0, 0.99, 0.97), np.float32) + front * albedo
    img = gaussian_blur(img, rng.uniform(0.5, 0.9))
    img = sensor_noise(rng, img)
    pixels = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    truth: dict[str, float | int | bool | str | None] = {
        "fill_mm": float(fill),
        "fill_pct": float(100.0 * fill / spec.nominal_fill_mm),
        "stopper": stopper,
        "cap": cap,
        "particles": n_particles,
        "defect": defect,
        "subtle": bool(subtle and defect is not None),
        "tilt_deg": float(tilt),  # camera roll, counter-clockwise positive
        "mm_per_px": float(scale),
    }
    return Image.fromarray(pixels, mode="RGB"), truth


def sample_vial(
    rng: np.random.Generator, product: str, defect_rate: float, subtle_fraction: float = 0.33
) -> tuple[Image.Image, str | None, dict[str, float | int | bool | str | None]]:
    """Draw one vial as the line produces it: defective with `defect_rate`, class uniform."""
    defect, subtle = draw_vial_defect(rng, defect_rate, subtle_fraction)
    img, truth = render_vial(rng, product, defect, subtle)
    return img, defect, truth


def draw_vial_defect(
    rng: np.random.Generator, defect_rate: float, subtle_fraction: float = 0.33
) -> tuple[str | None, bool]:
    """Which defect (None = good) the next vial has, and whether it is a subtle one:
    `pipeline.imaging.tablets.draw_unit` over `VIAL_DEFECTS`."""
    return draw_unit(rng, defect_rate, subtle_fraction, VIAL_DEFECTS)


# --------------------------------------------------------------------------- scene parts


def _draw_fill(rng: np.random.Generator, spec: VialSpec, defect: str | None, subtle: bool) -> float:
    """Fill height: natural spread inside the tolerance, or a low/high fill outside it."""
    nom, tol = spec.nominal_fill_mm, spec.fill_tolerance_mm
    if defect == "low-fill":
        off = tol + rng.uniform(*_SUBTLE_OUTSIDE_MM) if subtle else rng.uniform(tol + 1.5, 0.7 * nom)
        return nom - off
    if defect == "high-fill":
        top = spec.max_fill_mm - nom
        off = tol + rng.uniform(*_SUBTLE_OUTSIDE_MM) if subtle else rng.uniform(min(tol + 1.0, top), top)
        return nom + off
    limit = tol - _GOOD_MARGIN_MM
    while True:
        dev = rng.normal(0.0, spec.fill_sd_mm)
        if abs(dev) <= limit:
            return nom + dev


def _radii(spec: VialSpec, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outer and inner glass radius (mm) at height z along the axis (0 outside the glass)."""
    rb, rn, rf = spec.body_diameter_mm / 2.0, spec.neck_diameter_mm / 2.0, spec.flange_diameter_mm / 2.0
    z_sh, z_nk = spec.body_height_mm, spec.body_height_mm + spec.shoulder_mm
    z_fl = z_nk + spec.neck_height_mm
    heel = 1.2
    r_out = np.full(z.shape, rb, dtype=np.float32)
    low = z < heel
    r_out[low] = rb - heel + np.sqrt(np.clip(heel**2 - (heel - z[low]) ** 2, 0.0, None))
    t = np.clip((z - z_sh) / spec.shoulder_mm, 0.0, 1.0)
    t = t * t * (3.0 - 2.0 * t)
    r_out = np.where(z >= z_sh, rb + (rn - rb) * t, r_out)
    lip = np.clip((z - z_fl) / 0.4, 0.0, 1.0)  # rounded lower edge of the lip
    r_out = np.where(z >= z_fl, rn + (rf - rn) * lip, r_out)
    r_out = np.where((z < 0.0) | (z > spec.glass_height_mm), 0.0, r_out)
    r_bore = spec.bore_mm / 2.0
    r_in = np.where(z >= z_sh, (rb - spec.wall_mm) + (r_bore - rb + spec.wall_mm) * t, rb - spec.wall_mm)
    r_in = np.where(z < spec.bottom_mm, 0.0, r_in)
    return r_out.astype(np.float32), np.minimum(r_in, r_out).astype(np.float32)


def _glass_and_liquid(
    rng: np.random.Generator, spec: VialSpec, u: np.ndarray, z: np.ndarray, s: float, fill: float
) -> tuple[np.ndarray, np.ndarray]:
    """Transmission (HxWx3) of glass and liquid, and a zero front albedo to build on."""
    a = np.abs(u)
    r_out, r_in = _radii(spec, z)
    cover = np.clip((r_out - a) / s + 0.5, 0.0, 1.0) * (r_out > 0.0)  # anti-aliased silhouette
    cover *= np.clip((spec.glass_height_mm - z) / s + 0.5, 0.0, 1.0)
    lumen = np.clip((r_in - a) / s + 0.5, 0.0, 1.0) * (r_in > 0.0)
    clear = rng.uniform(0.88, 0.93) * (1.0 - 0.5 * np.exp(-np.maximum(r_in - a, 0.0) / 0.45))
    wall = rng.uniform(0.14, 0.24) + 0.12 * np.clip((a - r_in) / max(spec.wall_mm, 0.5), 0.0, 1.0)
    inside = clear * lumen + wall * (1.0 - lumen)
    # The shoulder is seen through obliquely curved glass; the lip is thick glass; the bottom
    # is a thick plate seen edge-on: all refract most of the backlight away.
    z_sh, z_nk = spec.body_height_mm, spec.body_height_mm + spec.shoulder_mm
    z_fl = z_nk + spec.neck_height_mm
    inside = np.where((z > z_sh) & (z < z_nk), inside * 0.6, inside)
    inside = np.where(z > z_fl, np.minimum(inside, rng.uniform(0.22, 0.3)), inside)
    inside = np.where(z < spec.bottom_mm, rng.uniform(0.22, 0.32), inside)
    inside = inside * (1.0 + 0.008 * smooth_noise(rng, z.shape, 5.0))  # scuffs, mould marks
    trans = 1.0 - cover + cover * inside
    trans = np.repeat(trans[..., None], 3, axis=2).astype(np.float32)

    # Liquid: lens darkening towards the walls, tint, meniscus rising along the walls.
    r_body = spec.inner_radius_mm
    rise = rng.uniform(0.9, 1.4) * np.exp(-np.maximum(r_body - a, 0.0) / rng.uniform(0.5, 0.8))
    surface = fill + spec.bottom_mm + rise
    liquid = np.clip((surface - z) / s + 0.5, 0.0, 1.0) * (z >= spec.bottom_mm) * lumen
    lens = rng.uniform(0.93, 1.0) * (1.0 - 0.55 * np.clip(a / r_body, 0.0, 1.0) ** 4)
    tint = np.asarray(spec.liquid_tint, np.float32) * rng.uniform(0.98, 1.02, 3).astype(np.float32)
    trans *= (1.0 - liquid[..., None]) + (liquid * lens)[..., None] * tint
    core = rng.uniform(0.5, 0.7) * np.exp(-0.5 * ((z - surface) / rng.uniform(0.12, 0.2)) ** 2)
    above = np.clip(z - surface - 0.2, 0.0, None)
    tail = 0.25 * np.exp(-above / 0.5) * (z > surface + 0.2)
    meniscus = np.clip(core + tail, 0.0, 0.9) * lumen * (z < spec.body_height_mm)
    trans *= (1.0 - meniscus)[..., None]
    return trans, np.zeros_like(trans)


def _paint_particles(
    rng: np.random.Generator,
    spec: VialSpec,
    u: np.ndarray,
    z: np.ndarray,
    s: float,
    fill: float,
    trans: np.ndarray,
    count: int,
    subtle: bool,
) -> None:
    """Specks (dark: rubber, metal; bright: glass flakes) and fibres suspended in the liquid."""
    reach = spec.inner_radius_mm - 1.4
    z_lo, z_hi = spec.bottom_mm + 1.0, spec.bottom_mm + fill - 1.0
    # Pixel coordinates of a point (pu, pz) in vial coordinates: invert the frame's mapping.
    for _ in range(count):
        pu, pz = rng.uniform(-reach, reach), rng.uniform(z_lo, max(z_hi, z_lo + 0.1))
        y, x = _pixel_of(u, z, pu, pz)
        kind = rng.choice(["dark", "bright", "fibre"], p=[0.45, 0.2, 0.35])
        if kind == "fibre":
            length = (rng.uniform(0.8, 1.4) if subtle else rng.uniform(1.5, 3.0)) / s
            pts = random_walk(rng, (x, y), rng.uniform(0.0, 2.0 * np.pi), length, 0.7, 0.35, smooth=0.7)
            y0, y1 = int(max(pts[:, 1].min() - 3, 0)), int(min(pts[:, 1].max() + 4, trans.shape[0]))
            x0, x1 = int(max(pts[:, 0].min() - 3, 0)), int(min(pts[:, 0].max() + 4, trans.shape[1]))
            ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            width = rng.uniform(0.7, 0.9) if subtle else rng.uniform(0.9, 1.3)
            cov = line_profile(polyline_distance(xs, ys, pts), width) * rng.uniform(0.55, 0.8)
            trans[y0:y1, x0:x1] *= (1.0 - cov)[..., None]
            continue
        radius = (rng.uniform(0.13, 0.18) if subtle else rng.uniform(0.2, 0.4)) / s
        if kind == "dark":
            add_spot(trans, x, y, radius, 0.05, rng.uniform(0.6, 0.8) if subtle else 0.95)
        else:  # a glass flake glints brighter than the liquid around it, inside a thin refraction rim
            add_spot(trans, x, y, radius + 0.5, 0.45, 0.4)
            add_spot(trans, x, y, radius, 1.3, 1.0)


def _closure(
    rng: np.random.Generator,
    spec: VialSpec,
    u: np.ndarray,
    z: np.ndarray,
    s: float,
    trans: np.ndarray,
    albedo: np.ndarray,
    stopper: bool,
    cap: bool,
) -> None:
    """Rubber stopper (plug in the neck, flange on the lip) and the crimped aluminium cap."""
    a = np.abs(u)
    z_nk = spec.body_height_mm + spec.shoulder_mm
    z_fl = z_nk + spec.neck_height_mm
    top = spec.glass_height_mm
    rubber = np.asarray(spec.stopper_color, np.float32) * rng.uniform(0.9, 1.1)
    if stopper:
        plug = _box(a, z, s, spec.bore_mm / 2.0, z_nk - 0.3, top)  # legs reach the shoulder
        flange = _box(a, z, s, spec.flange_diameter_mm / 2.0 - 0.15, top, top + _STOPPER_FLANGE_MM)
        for cov, seen in ((plug, 0.85), (flange, 1.0)):
            trans *= (1.0 - cov)[..., None]
            albedo += cov[..., None] * (rubber * seen - albedo)
    if not cap:
        return
    cap_top = top + (_STOPPER_FLANGE_MM if stopper else 0.0) + _CAP_TOP_MM
    r_cap = spec.flange_diameter_mm / 2.0 + 0.3
    # The skirt is rolled in under the lip: its radius shrinks over the bottom _SKIRT_MM.
    tuck = np.clip((z - (z_fl - _SKIRT_MM)) / _SKIRT_MM, 0.0, 1.0)
    r_skirt = spec.neck_diameter_mm / 2.0 + 0.3 + (r_cap - spec.neck_diameter_mm / 2.0 - 0.3) * np.sqrt(tuck)
    alu = _box(a, z, s, r_cap, z_fl - _SKIRT_MM, cap_top) * np.clip((r_skirt - a) / s + 0.5, 0.0, 1.0)
    # Metal: diffuse grey plus vertical specular streaks from the front light.
    ua = u / r_cap
    shine = 0.45 + 1.5 * np.exp(-(((ua - rng.uniform(-0.45, -0.2)) / 0.16) ** 2))
    shine += 0.6 * np.exp(-(((ua - rng.uniform(0.3, 0.5)) / 0.1) ** 2))
    shine *= 1.0 - 0.35 * np.exp(-(((z - (z_fl - _SKIRT_MM * 0.5)) / 0.35) ** 2))  # crimp roll
    metal = np.asarray(spec.cap_color, np.float32) * shine[..., None]
    trans *= (1.0 - alu)[..., None]
    albedo += alu[..., None] * (metal - albedo)
    button = _box(a, z, s, 0.85 * spec.flange_diameter_mm / 2.0, cap_top, cap_top + _BUTTON_MM)
    plastic = np.asarray(spec.button_color, np.float32) * (0.8 + 0.3 * np.exp(-(((ua + 0.3) / 0.2) ** 2)))[..., None]
    trans *= (1.0 - button)[..., None]
    albedo += button[..., None] * (plastic - albedo)


def _belt(rng: np.random.Generator, z: np.ndarray, s: float, trans: np.ndarray, albedo: np.ndarray) -> None:
    """Dark conveyor the vial stands on: everything below the vial's bottom line."""
    cov = np.clip(-z / s + 0.5, 0.0, 1.0)
    dark = rng.uniform(0.12, 0.2) * (1.0 + 0.05 * smooth_noise(rng, z.shape, 3.0))
    trans *= (1.0 - cov)[..., None]
    albedo += cov[..., None] * (dark[..., None] - albedo)


def _box(a: np.ndarray, z: np.ndarray, s: float, radius: float, z0: float, z1: float) -> np.ndarray:
    """Anti-aliased coverage of a cylinder of `radius` between heights z0 and z1, seen from the side."""
    side = np.clip((radius - a) / s + 0.5, 0.0, 1.0)
    return side * np.clip((z - z0) / s + 0.5, 0.0, 1.0) * np.clip((z1 - z) / s + 0.5, 0.0, 1.0)


def _backlight(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Diffuse panel: level, a linear gradient and a little vignetting."""
    ys, xs = pixel_grid(h, w)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    psi = rng.uniform(0.0, 2.0 * np.pi)
    grad = rng.uniform(0.0, 0.08) * ((xs - cx) * np.cos(psi) + (ys - cy) * np.sin(psi)) / h
    r2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / float(h * h)
    return (rng.uniform(0.8, 0.95) * (1.0 + grad) * (1.0 - rng.uniform(0.02, 0.1) * r2)).astype(np.float32)


def _vial_coords(
    w: int, h: int, xc: float, yb: float, tilt: float, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: u across the vial axis and z up along it (mm), origin at the outer bottom centre."""
    ys, xs = pixel_grid(h, w)
    dx, dy = xs - xc, yb - ys
    c, sn = np.cos(tilt), np.sin(tilt)
    return ((dx * c + dy * sn) * s).astype(np.float32), ((dy * c - dx * sn) * s).astype(np.float32)


def _pixel_of(u: np.ndarray, z: np.ndarray, pu: float, pz: float) -> tuple[float, float]:
    """(row, col) of vial point (pu, pz), by inverting the affine map through three pixels."""
    du = (float(u[0, 1] - u[0, 0]), float(u[1, 0] - u[0, 0]))  # d u / d col, d u / d row
    dz = (float(z[0, 1] - z[0, 0]), float(z[1, 0] - z[0, 0]))
    m = np.array([[du[0], du[1]], [dz[0], dz[1]]], dtype=np.float64)
    col, row = np.linalg.solve(m, np.array([pu - float(u[0, 0]), pz - float(z[0, 0])]))
    return float(row), float(col)
