"""Top-view renderer of tablets on a conveyor belt, as the line's inspection camera sees them.

Why a renderer: the demo line, the tests and the default model need labelled images of good
and defective units without shipping data. Every nuisance a real camera adds varies per frame
(belt texture and dust, light direction, lighting gradient and vignetting, exposure, position,
rotation, size and tint of the tablet, powder texture and pores, shadow, blur, sensor noise), so
a model trained on these images must find the defect itself, not a rendering shortcut.

A render is a pure function of the generator state: same seed, same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.imaging.defects import PAINTERS
from pipeline.imaging.products import (
    ASSORTED_TABLETS,
    DEFECT_CLASSES,
    TabletSpec,
    check_defect,
    draw_assorted_spec,
    get_spec,
)
from pipeline.imaging.raster import (
    add_spot,
    gaussian_blur,
    illumination,
    pixel_grid,
    sensor_noise,
    shift_px,
    smooth_noise,
)
from pipeline.imaging.scene import Scene, TabletGeometry, scene_radiance

# Width of the camera's field of view in millimetres: a 10 mm tablet fills ~55 % of the frame.
FIELD_OF_VIEW_MM = 18.0
REFERENCE_SIZE = 160
MIN_SIZE = 48

# Belt materials seen on tablet lines: dark blue-grey, dark green PU, neutral grey.
_BELTS: tuple[tuple[float, float, float], ...] = (
    (0.12, 0.13, 0.16),
    (0.10, 0.14, 0.12),
    (0.26, 0.26, 0.27),
)


def render_tablet(
    rng: np.random.Generator,
    product: str,
    defect: str | None,
    size: int = REFERENCE_SIZE,
    subtle: bool = False,
) -> Image.Image:
    """Render one unit of `product` (RGB, size x size) with `defect` or none (good unit)."""
    return render_tablet_with_mask(rng, product, defect, size, subtle)[0]


def render_tablet_with_mask(
    rng: np.random.Generator,
    product: str,
    defect: str | None,
    size: int = REFERENCE_SIZE,
    subtle: bool = False,
) -> tuple[Image.Image, np.ndarray]:
    """`render_tablet` plus where the defect is: float32 [size, size] in 0..1 (zeros if good).

    Same generator draws as `render_tablet`, so the same seed gives the same image. Rendering
    one seed twice, once good and once with a defect, gives a counterfactual pair that differs
    only by the defect. `product` ASSORTED_TABLETS draws a new tablet of the assorted family
    (first, from `rng`, so both renders of a counterfactual pair show the same tablet).
    """
    spec = draw_assorted_spec(rng) if product == ASSORTED_TABLETS else get_spec(product)
    check_defect(defect)
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    size = int(size)
    scale = size / REFERENCE_SIZE

    light_az = np.deg2rad(225.0) + rng.uniform(-0.6, 0.6)
    light_el = np.deg2rad(rng.uniform(45.0, 65.0))
    light = np.array(
        [np.cos(light_el) * np.cos(light_az), np.cos(light_el) * np.sin(light_az), np.sin(light_el)],
        dtype=np.float32,
    )
    ambient = float(rng.uniform(0.45, 0.6))

    scene = _build_scene(rng, spec, size, scale)
    # The defect draws from its own generator, split off whether or not there is a defect:
    # the same seed then gives the same unit, frame and noise with or without the defect.
    defect_rng = np.random.default_rng(rng.integers(0, 2**63))
    mask = np.zeros((size, size), dtype=np.float32)
    y0, y1, x0, x1 = scene.box
    if defect is not None:
        mask[y0:y1, x0:x1] = PAINTERS[defect](scene, defect_rng, subtle)
    tablet = np.zeros((size, size, 3), dtype=np.float32)
    tablet[y0:y1, x0:x1] = scene_radiance(scene, light, ambient)
    alpha = np.zeros((size, size), dtype=np.float32)
    alpha[y0:y1, x0:x1] = scene.alpha

    belt = _belt(rng, size, scale)
    shadow_offset = rng.uniform(1.5, 3.5) * scale
    shadow = shift_px(alpha, -light[0] * shadow_offset * 1.4, -light[1] * shadow_offset * 1.4)
    shadow = gaussian_blur(shadow, rng.uniform(2.0, 3.5) * scale)
    belt *= (1.0 - rng.uniform(0.35, 0.6) * shadow)[..., None]

    a = alpha[..., None]
    img = belt * (1.0 - a) + tablet * a
    img *= illumination(rng, (size, size))[..., None] * rng.uniform(0.78, 0.92)
    img = gaussian_blur(img, rng.uniform(0.35, 0.75) * scale)
    img = sensor_noise(rng, img)
    pixels = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB"), mask


def sample_unit(
    rng: np.random.Generator,
    product: str,
    defect_rate: float,
    subtle_fraction: float = 0.33,
    size: int = REFERENCE_SIZE,
) -> tuple[Image.Image, str | None]:
    """Draw one unit as the line produces it: defective with `defect_rate`, class uniform."""
    defect, subtle = draw_unit(rng, defect_rate, subtle_fraction)
    return render_tablet(rng, product, defect, size=size, subtle=subtle), defect


def draw_unit(
    rng: np.random.Generator,
    defect_rate: float,
    subtle_fraction: float = 0.33,
    classes: tuple[str, ...] = DEFECT_CLASSES,
) -> tuple[str | None, bool]:
    """Which defect (None = good) the next unit has, uniform over `classes` (the tablet defects
    by default), and whether it is a subtle one."""
    check_rates(defect_rate, subtle_fraction)
    if not classes:
        raise ValueError("classes must name at least one defect")
    if rng.random() >= defect_rate:
        return None, False
    defect = classes[int(rng.integers(len(classes)))]
    return defect, bool(rng.random() < subtle_fraction)


def check_rates(defect_rate: float, subtle_fraction: float) -> None:
    """ValueError unless both are probabilities (the sampling parameters of every renderer)."""
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
    if not 0.0 <= subtle_fraction <= 1.0:
        raise ValueError(f"subtle_fraction must be in [0, 1], got {subtle_fraction}")


def _build_scene(rng: np.random.Generator, spec: TabletSpec, size: int, scale: float) -> Scene:
    """Place, rotate and model one good tablet: outline, biconvex height, powder albedo."""
    ppm = size / FIELD_OF_VIEW_MM * rng.uniform(0.98, 1.02)  # tolerance of tablet size
    geom = TabletGeometry(spec.shape, 0.5 * spec.length_mm * ppm, 0.5 * spec.width_mm * ppm)
    jitter = 4.0 * scale
    cx = (size - 1) / 2.0 + rng.uniform(-jitter, jitter)
    cy = (size - 1) / 2.0 + rng.uniform(-jitter, jitter)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    # Model only the box around the tablet (the rest of the frame is belt): half the work.
    reach = geom.r_len + 4.0 * scale
    y0, y1 = max(int(cy - reach), 0), min(int(np.ceil(cy + reach)) + 1, size)
    x0, x1 = max(int(cx - reach), 0), min(int(np.ceil(cx + reach)) + 1, size)
    ys, xs = pixel_grid(size, size)
    dx, dy = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy

    # Slightly irregular rim (press tooling wear, powder at the edge).
    ang = np.arctan2(v, u)
    rim = np.zeros_like(ang)
    for k in (3, 5, 8, 13):
        rim += rng.uniform(0.0, 0.12) * scale * np.sin(k * ang + rng.uniform(0, 2 * np.pi))
    inside = -(geom.sdf(u, v) + rim)
    alpha = np.clip(inside + 0.5, 0.0, 1.0).astype(np.float32)

    # Biconvex face: flat land at the rim, a dome inside, a rounded edge; plus the score groove.
    land = 0.25 * ppm
    t = np.clip((inside - land) / (geom.r_w - land), 0.0, 1.0)
    height = rng.uniform(0.16, 0.22) * geom.r_w * (1.0 - (1.0 - t) ** 2)
    height += 3.0 * scale * (1.0 - np.exp(-np.maximum(inside, 0.0) / (2.5 * scale)))
    occlusion = np.ones_like(alpha)
    if spec.scored:
        groove_w = rng.uniform(1.4, 1.8) * scale
        groove = np.exp(-((v / groove_w) ** 2)) * np.clip(inside / (2.0 * scale), 0.0, 1.0)
        height -= rng.uniform(1.6, 2.2) * scale * groove
        occlusion *= 1.0 - rng.uniform(0.15, 0.28) * groove
    box = inside.shape
    height += 0.05 * scale * smooth_noise(rng, box, 4.0 * scale)

    # Albedo: lot tint, powder mottling and a few shallow pores (normal, not defects).
    base = np.asarray(spec.color, dtype=np.float32)
    base = base * rng.uniform(1.0 - spec.color_jitter, 1.0 + spec.color_jitter)
    base = base + rng.normal(0.0, spec.color_jitter / 3.0, 3).astype(np.float32)
    mottling = 1.0 + 0.014 * smooth_noise(rng, box, 7.0 * scale)
    mottling += 0.008 * smooth_noise(rng, box, 1.3 * scale)
    albedo = np.clip(base, 0.0, 1.0) * mottling[..., None]
    face_pixels = np.flatnonzero(inside.ravel() > 2.0 * scale)
    for _ in range(int(rng.poisson(6))):
        y, x = divmod(int(face_pixels[rng.integers(len(face_pixels))]), box[1])
        add_spot(occlusion, x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5), 0.5 * scale,
                 0.0, rng.uniform(0.03, 0.07))

    return Scene(
        spec=spec,
        geom=geom,
        scale=scale,
        u=u,
        v=v,
        inside=inside,
        alpha=alpha,
        height=height.astype(np.float32),
        albedo=albedo.astype(np.float32),
        occlusion=occlusion.astype(np.float32),
        overlay_color=np.zeros((*box, 3), dtype=np.float32),
        overlay_alpha=np.zeros(box, dtype=np.float32),
        box=(y0, y1, x0, x1),
    )


def _belt(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Conveyor belt: material colour, weave, low-frequency wear and a little dust."""
    color = np.asarray(_BELTS[int(rng.integers(len(_BELTS)))], dtype=np.float32)
    color = color * rng.uniform(0.85, 1.15)
    period = rng.uniform(2.6, 4.0) * scale
    rows = np.arange(size, dtype=np.float32)[:, None]
    weave = 0.035 * np.sin(2 * np.pi * rows / period + rng.uniform(0, 2 * np.pi))
    texture = 1.0 + weave + 0.06 * smooth_noise(rng, (size, size), 20.0 * scale)
    texture += 0.035 * smooth_noise(rng, (size, size), 1.2 * scale)
    belt = color * texture[..., None]
    belt = belt.astype(np.float32)
    for _ in range(int(rng.poisson(2.0))):
        px, py = rng.uniform(0, size, 2)
        add_spot(belt, px, py, rng.uniform(0.6, 1.1) * scale, rng.uniform(0.35, 0.6))
    return belt
