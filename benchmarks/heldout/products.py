"""The four held-out products and their defects (numpy only; nothing from `pipeline`).

Each renderer draws one unit in its own frame (u along the unit, v across, in px), lit from a
random direction, on a textured background, with pose, scale and light jitter, then box-
reduces, blurs, adds sensor noise and quantises (see `draw.finish`). `subtle` defects sit at the
edge of visibility: chips of 1-3 px, discoloration of a few grey levels, one small particle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks.heldout import draw
from benchmarks.heldout.draw import Array, Pose

Renderer = Callable[[np.random.Generator, "str | None", bool], Array]


@dataclass(frozen=True)
class ProductSpec:
    """A held-out product: id, image size (width, height), defect classes, which can be subtle,
    and what its plant would declare about it when training (`linesight train --invariance`,
    `--smallest-defect-px`: how units face the camera, the smallest defect in frame pixels)."""

    product: str
    width: int
    height: int
    defects: tuple[str, ...]
    subtle_classes: tuple[str, ...]
    render: Renderer
    invariance: str
    smallest_defect_px: float


def _light(rng: np.random.Generator, theta: float) -> tuple[float, float, float]:
    """A light direction (towards the light) in the unit's frame, mostly from above the camera."""
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(0.9, 1.3)
    lx, ly, lz = np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)
    c, s = np.cos(theta), np.sin(theta)
    return c * lx + s * ly, -s * lx + c * ly, lz


def _shade(nx: Array, ny: Array, nz: Array, light: tuple[float, float, float],
           ambient: float, gloss: float) -> tuple[Array, Array]:
    """Lambert shading and a Blinn highlight of unit normals (camera looks along -z)."""
    lx, ly, lz = light
    diffuse = np.clip(nx * lx + ny * ly + nz * lz, 0.0, 1.0)
    hx, hy, hz = lx, ly, lz + 1.0
    hn = np.sqrt(hx * hx + hy * hy + hz * hz)
    spec = np.clip((nx * hx + ny * hy + nz * hz) / hn, 0.0, 1.0) ** 40 * gloss
    return ambient + (1.0 - ambient) * diffuse, spec


def _belt(rng: np.random.Generator, h: int, w: int) -> Array:
    base = np.array([0.20, 0.23, 0.27]) + rng.uniform(-0.03, 0.03) + rng.normal(0, 0.008, 3)
    return draw.background(rng, h, w, (float(base[0]), float(base[1]), float(base[2])), 0.025)


def _shadow(img: Array, sd: Array, strength: float) -> None:
    """Darken the background under a unit (soft shadow from its own signed distance)."""
    img *= (1.0 - strength * np.clip(1.0 - sd / 6.0, 0.0, 1.0) ** 2)[..., None]


def _speck(rng: np.random.Generator, u: Array, v: Array, at: tuple[float, float], subtle: bool,
           img: Array) -> None:
    """Contamination: a dark speck (subtle: about 1 px and faint)."""
    r = rng.uniform(0.7, 1.1) if subtle else rng.uniform(1.8, 3.8)
    a = rng.uniform(0.25, 0.4) if subtle else rng.uniform(0.75, 0.95)
    colour = np.array([0.12, 0.09, 0.07]) + rng.uniform(0, 0.05)
    sd = draw.ellipse_sd(u - at[0], v - at[1], r, r * rng.uniform(0.7, 1.0))
    draw.paint(img, a * draw.coverage(sd, soft=0.3), colour)


def _crack_line(rng: np.random.Generator, u: Array, v: Array, start: tuple[float, float],
                heading: float, subtle: bool, img: Array, inside: Array) -> None:
    """A thin jagged crack (dark core, light lip); subtle: short and faint."""
    length = rng.uniform(9, 16) if subtle else rng.uniform(35, 80)
    path = draw.random_walk(rng, start, heading, length, step=2.5, wiggle=0.45)
    d = draw.segment_distance(u, v, path)
    width = rng.uniform(0.35, 0.55) if subtle else rng.uniform(0.5, 0.9)
    dark = rng.uniform(0.12, 0.2) if subtle else rng.uniform(0.35, 0.55)
    core = draw.coverage(d - width, soft=0.4) * inside
    lip = draw.coverage(np.abs(d - width - 0.8) - 0.4, soft=0.4) * inside
    img *= (1.0 - dark * core)[..., None]
    img *= (1.0 + 0.3 * dark * lip)[..., None]


def _discolour(rng: np.random.Generator, u: Array, v: Array, at: tuple[float, float],
               subtle: bool, img: Array, inside: Array, tint: Array) -> None:
    """A blotch shifted towards `tint` (subtle: 3-6 grey levels at its centre)."""
    r = rng.uniform(8, 16) if subtle else rng.uniform(9, 22)
    amount = rng.uniform(3, 6) / 255 if subtle else rng.uniform(0.06, 0.14)
    d2 = ((u - at[0]) ** 2 + (v - at[1]) ** 2 * rng.uniform(0.6, 1.4)) / (r * r)
    blob = np.exp(-2.0 * d2) * inside
    img += (amount * blob)[..., None] * tint


# ------------------------------------------------------------------------------ tablets

def _tablet(rng: np.random.Generator, defect: str | None, subtle: bool, *, oval: bool) -> Array:
    size = 200
    x, y = draw.grid(size, size)
    theta = rng.uniform(0, 2 * np.pi)
    pose = Pose(size / 2 + rng.uniform(-7, 7), size / 2 + rng.uniform(-7, 7), theta,
                rng.uniform(0.95, 1.05))
    u, v = draw.local(x, y, pose)
    a, b = (rng.uniform(76, 79), rng.uniform(43, 45)) if oval else (68.0, 68.0)
    img = _belt(rng, size, size)
    sd = draw.ellipse_sd(u, v, a, b) * pose.scale
    sh = draw.ellipse_sd(u - 4.0, v - 4.0, a, b) * pose.scale
    _shadow(img, sh, 0.45)

    # biconvex dome with a bevelled land near the rim
    rr = np.clip((u / a) ** 2 + (v / b) ** 2, 0.0, 1.0)
    k = 0.55
    nx, ny = k * u / a, k * v / b
    land = np.clip((np.sqrt(rr) - 0.9) / 0.1, 0.0, 1.0)
    nx, ny = nx * (1 + 1.5 * land), ny * (1 + 1.5 * land)
    nz = np.ones_like(nx)
    n = np.sqrt(nx * nx + ny * ny + nz * nz)
    nx, ny, nz = nx / n, ny / n, nz / n
    light = _light(rng, theta)
    diffuse, spec = _shade(nx, ny, nz, light, 0.45, 0.35 if oval else 0.08)
    if oval:
        base = np.array([0.93, 0.52, 0.58]) + rng.normal(0, 0.012, 3)  # pink film coat
    else:
        base = np.array([0.93, 0.92, 0.89]) + rng.normal(0, 0.006, 3)
    grain = 0.018 * draw.smooth_noise(rng, size, size, 2.0) + 0.01 * draw.smooth_noise(rng, size, size, 9.0)
    surface = (base[None, None, :] + grain[..., None]) * diffuse[..., None] + spec[..., None]

    inside = draw.coverage(sd)
    if not oval:  # score line across the face: a groove with a lit and a shaded wall
        groove = draw.coverage(np.abs(v) - 1.1, soft=0.4) * (np.abs(u) < a * 0.93)
        wall = np.sign(v) * (light[1] if abs(light[1]) > 0.05 else 0.1)
        surface *= (1.0 - 0.28 * groove)[..., None]
        edge = draw.coverage(np.abs(np.abs(v) - 1.6) - 0.5, soft=0.3) * (np.abs(u) < a * 0.93)
        surface *= (1.0 + 0.12 * edge * np.sign(wall))[..., None]

    rim_angle = rng.uniform(0, 2 * np.pi)
    rim = (a * np.cos(rim_angle), b * np.sin(rim_angle))
    if defect == "chip":  # a bite out of the rim; its fracture face is rough and dull
        rc = rng.uniform(1.5, 3.0) if subtle else rng.uniform(6, 13)
        cu, cv = rim[0] * (1 + 0.3 * rc / a), rim[1] * (1 + 0.3 * rc / b)
        dc = np.hypot(u - cu, v - cv) - rc
        inside = inside * (1.0 - draw.coverage(dc))
        face = draw.coverage(np.abs(dc - 1.0) - 1.0, soft=0.5)
        surface *= (1.0 - 0.18 * face)[..., None]
    elif defect == "crack":
        _crack_line(rng, u, v, (rim[0] * 0.92, rim[1] * 0.92), rim_angle + np.pi + rng.normal(0, 0.4),
                    subtle, surface, np.ones_like(u))
    elif defect == "discoloration":
        at = (rng.uniform(-0.5, 0.5) * a, rng.uniform(-0.5, 0.5) * b)
        tint = np.array([-0.3, -0.6, -1.0]) if not oval else np.array([0.5, 0.9, 0.8])
        _discolour(rng, u, v, at, subtle, surface, np.ones_like(u), tint)
    elif defect == "contamination":
        at = (rng.uniform(-0.7, 0.7) * a, rng.uniform(-0.7, 0.7) * b)
        _speck(rng, u, v, at, subtle, surface)
    draw.paint(img, inside, surface)
    lightmap = draw.gradient(size, size, rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.25)) * rng.uniform(0.92, 1.06)
    return draw.finish(rng, img, lightmap, rng.uniform(0.35, 0.8), rng.uniform(0.006, 0.012))


def render_scored_tablet(rng: np.random.Generator, defect: str | None, subtle: bool) -> Array:
    return _tablet(rng, defect, subtle, oval=False)


def render_oval_tablet(rng: np.random.Generator, defect: str | None, subtle: bool) -> Array:
    return _tablet(rng, defect, subtle, oval=True)


# ------------------------------------------------------------------------------ capsule

def render_capsule(rng: np.random.Generator, defect: str | None, subtle: bool) -> Array:
    w, h = 256, 128
    x, y = draw.grid(h, w)
    theta = rng.normal(0, 0.035) + (np.pi if rng.random() < 0.5 else 0.0)
    pose = Pose(w / 2 + rng.uniform(-6, 6), h / 2 + rng.uniform(-4, 4), theta, rng.uniform(0.96, 1.04))
    u, v = draw.local(x, y, pose)
    half, r = rng.uniform(98, 101), 33.0
    seam = rng.uniform(-8, -4)  # cap covers u < seam, body u > seam - overlap
    img = _belt(rng, h, w)

    body_start = seam - 30.0 if defect == "missing-cap-half" else -half

    def shape(uu: Array, vv: Array) -> tuple[Array, Array, Array]:
        """Distance from the capsule's spine, offset along it, and signed distance (px)."""
        lo = body_start if defect == "missing-cap-half" else body_start + r
        du = uu - np.clip(uu, lo, half - r)
        dist = np.hypot(du, vv)
        sd = dist - r
        if defect == "missing-cap-half":  # the body alone ends open at body_start
            sd = np.maximum(sd, body_start - uu)
        return dist, du, sd * pose.scale

    dist, du, sd_full = shape(u, v)
    _shadow(img, shape(u - 3.0, v - 5.0)[2], 0.4)

    rho = np.clip(dist / r, 0.0, 0.999)
    nz = np.sqrt(1.0 - rho**2)
    nx, ny = du / r, v / r
    light = _light(rng, theta)
    diffuse, spec = _shade(nx, ny, nz, light, 0.4, 0.55)
    cap_c = np.array([0.72, 0.10, 0.14]) + rng.normal(0, 0.01, 3)
    body_c = np.array([0.96, 0.80, 0.22]) + rng.normal(0, 0.01, 3)
    is_cap = (draw.coverage(u - seam) if defect != "missing-cap-half" else np.zeros_like(u))[..., None]
    colour = is_cap * cap_c + (1 - is_cap) * body_c
    gel = 0.01 * draw.smooth_noise(rng, h, w, 6.0)
    surface = (colour + gel[..., None]) * diffuse[..., None] + spec[..., None]
    if defect != "missing-cap-half":  # the cap's rim: a fine dark line with a lit lip
        rimline = draw.coverage(np.abs(u - seam) - 0.6, soft=0.4) * (rho < 0.98)
        surface *= (1.0 - 0.35 * rimline)[..., None]
    else:  # the open end of the body: its inside is dark
        mouth = draw.coverage(draw.ellipse_sd(u - body_start - 2.5, v, 3.0, r - 2.0), soft=0.4)
        surface = surface * (1.0 - 0.6 * mouth)[..., None]

    inside = draw.coverage(sd_full)
    spot = (rng.uniform(-half * 0.7, half * 0.7), rng.uniform(-0.6, 0.6) * r)
    if defect == "dent":  # a dimple: light/dark dipole facing the light
        rd = rng.uniform(2.5, 4.0) if subtle else rng.uniform(6, 11)
        k = rng.uniform(0.07, 0.11) if subtle else rng.uniform(0.25, 0.4)
        du2, dv2 = u - spot[0], v - spot[1]
        g = np.exp(-(du2**2 + dv2**2) / (2 * rd * rd))
        dip = (du2 * light[0] + dv2 * light[1]) / rd * g
        surface *= (1.0 + k * dip - 0.3 * k * g)[..., None]
    elif defect == "crack":
        _crack_line(rng, u, v, spot, rng.uniform(0, 2 * np.pi), subtle, surface, np.ones_like(u))
    elif defect == "contamination":
        _speck(rng, u, v, spot, subtle, surface)
    draw.paint(img, inside, surface)
    lightmap = draw.gradient(h, w, rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.25)) * rng.uniform(0.92, 1.06)
    return draw.finish(rng, img, lightmap, rng.uniform(0.35, 0.8), rng.uniform(0.006, 0.012))


# ------------------------------------------------------------------------------ vial

def render_vial(rng: np.random.Generator, defect: str | None, subtle: bool) -> Array:
    w, h = 96, 192
    x, y = draw.grid(h, w)
    pose = Pose(w / 2 + rng.uniform(-3, 3), h / 2 + rng.uniform(-3, 3), rng.normal(0, 0.01),
                rng.uniform(0.97, 1.03))
    u, v = draw.local(x, y, pose)  # v points down: gravity
    panel = np.array([0.80, 0.81, 0.80]) + rng.uniform(-0.04, 0.04)
    img = draw.background(rng, h, w, (float(panel[0]), float(panel[1]), float(panel[2])), 0.012)

    body = draw.box_sd(u, v - 28.0, 28.0, 58.0, 6.0)  # v in [-30, 86]
    t = np.clip((v + 42.0) / 12.0, 0.0, 1.0)
    shoulder = np.maximum(np.abs(u) - (14.0 + 14.0 * t), np.maximum(-42.0 - v, v + 29.0))
    neck = draw.box_sd(u, v + 50.0, 14.0, 9.0, 1.0)
    glass_sd = np.minimum(np.minimum(body, shoulder), neck) * pose.scale
    glass = draw.coverage(glass_sd)
    half_width = np.where(v > -30, 28.0, np.where(v > -42, 14.0 + 14.0 * t, 14.0))

    # clear glass: the panel seen through it, a little darker and green; dark walls, one highlight
    img *= (1.0 - glass * 0.07)[..., None]
    img *= 1.0 - glass[..., None] * np.array([0.03, 0.0, 0.02])
    wall = glass * (1.0 - draw.coverage(glass_sd + 1.8))
    img *= (1.0 - 0.5 * wall)[..., None]
    hl_u = -0.55 * half_width
    highlight = draw.coverage(np.abs(u - hl_u) - 1.2, soft=0.8) * glass * (v > -38) * (v < 80)
    img += (0.12 * highlight)[..., None]

    level = -5.0 + rng.uniform(-1.5, 1.5)
    if defect == "low-fill":
        level += rng.uniform(5.5, 8.0) if subtle else rng.uniform(16.0, 45.0)
    meniscus = rng.uniform(2.5, 3.5)
    surface = level - meniscus * (np.abs(u) / 28.0) ** 2
    liquid = draw.coverage(surface - v) * draw.coverage(body * pose.scale + 1.2)
    tint = np.array([0.96, 0.93, 0.80]) + rng.normal(0, 0.005, 3)
    img *= (1.0 - liquid[..., None] * (1.0 - tint))
    men_line = draw.coverage(np.abs(v - surface) - 0.7, soft=0.4) * draw.coverage(body * pose.scale + 1.2)
    img *= (1.0 - 0.35 * men_line)[..., None]

    if defect == "particle":  # settled on the bottom (gravity), in the liquid
        count = 1 if subtle else int(rng.integers(2, 6))
        for _ in range(count):
            pu, pv = rng.uniform(-20, 20), rng.uniform(80.5, 84.0)
            r = rng.uniform(0.6, 0.9) if subtle else rng.uniform(1.0, 2.0)
            a = rng.uniform(0.22, 0.32) if subtle else rng.uniform(0.55, 0.85)
            sd = draw.ellipse_sd(u - pu, v - pv, r * rng.uniform(1.0, 1.8), r)
            draw.paint(img, a * draw.coverage(sd, soft=0.3), (0.15, 0.13, 0.12))
    elif defect == "crack":
        start = (rng.uniform(-20, 20), rng.uniform(-20, 70))
        _crack_line(rng, u, v, start, rng.uniform(0, 2 * np.pi), subtle, img, glass)

    # stopper, aluminium crimp and flip-off top
    stopper = draw.coverage(draw.box_sd(u, v + 58.0, 12.5, 3.5, 1.0) * pose.scale)
    draw.paint(img, stopper, (0.33, 0.33, 0.35))
    if defect != "missing-cap" or subtle:
        crimp_sd = draw.box_sd(u, v + 64.0, 17.0, 10.0, 1.5) * pose.scale
        alu = 0.55 + 0.3 * np.sqrt(np.clip(1.0 - (u / 17.0) ** 2, 0.0, 1.0)) - 0.15 * (u / 17.0)
        ridges = 1.0 - 0.15 * draw.coverage(np.abs(((v + 64.0) % 3.0) - 1.5) - 0.4) * (v > -60)
        draw.paint(img, draw.coverage(crimp_sd), np.stack([alu * ridges] * 3, axis=-1))
        if not (defect == "missing-cap" and subtle):  # subtle: only the flip-off top is missing
            top_sd = draw.box_sd(u, v + 77.5, 16.0, 4.0, 2.0) * pose.scale
            blue = np.array([0.16, 0.32, 0.72]) + rng.normal(0, 0.01, 3)
            shade = (0.75 + 0.35 * np.sqrt(np.clip(1.0 - (u / 16.0) ** 2, 0.0, 1.0)))[..., None]
            draw.paint(img, draw.coverage(top_sd), blue * shade)
    lightmap = draw.gradient(h, w, rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.15)) * rng.uniform(0.94, 1.05)
    return draw.finish(rng, img, lightmap, rng.uniform(0.3, 0.7), rng.uniform(0.005, 0.01))


PRODUCTS: dict[str, ProductSpec] = {
    s.product: s
    for s in (
        ProductSpec("heldout-tablet-biconvex-scored-white", 200, 200,
                    ("chip", "crack", "discoloration", "contamination"),
                    ("chip", "crack", "discoloration", "contamination"), render_scored_tablet,
                    "any-orientation", 1.5),
        ProductSpec("heldout-tablet-oval-coloured", 200, 200,
                    ("chip", "crack", "discoloration", "contamination"),
                    ("chip", "crack", "discoloration", "contamination"), render_oval_tablet,
                    "any-orientation", 1.5),
        ProductSpec("heldout-capsule-two-tone", 256, 128,
                    ("dent", "crack", "missing-cap-half", "contamination"),
                    ("dent", "crack", "contamination"), render_capsule, "lying", 1.5),
        ProductSpec("heldout-vial-2ml-upright", 96, 192,
                    ("low-fill", "particle", "missing-cap", "crack"),
                    ("low-fill", "particle", "missing-cap", "crack"), render_vial, "upright", 1.0),
    )
}


def render_unit(product: str, rng: np.random.Generator, defect: str | None, subtle: bool = False) -> Array:
    """One HxWx3 uint8 image of `product` with `defect` (None: a good unit)."""
    spec = PRODUCTS[product]
    if defect is not None and defect not in spec.defects:
        raise ValueError(f"{product} has no defect class {defect!r}; classes: {', '.join(spec.defects)}")
    return spec.render(rng, defect, subtle and defect in spec.subtle_classes)
