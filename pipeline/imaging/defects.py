"""Defect painters: each edits a `Scene`'s physical layers the way the real defect does.

- crack: a thin jagged fissure running in from the rim; it occludes light and dips the surface.
- chip: a piece of the rim broken off; the gap shows the belt, the fracture face is lower and rough.
- discoloration: an irregular blotch where the albedo takes the product's stain tint.
- contamination: foreign matter on the face, a dark or coloured speck or a fibre.

`subtle=True` paints smaller, lower-contrast versions: still plainly a defect to a careful
inspector looking at the image, but near the limit of what the camera resolves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.imaging.raster import (
    jagged_path,
    line_profile,
    polyline_distance,
    random_walk,
    smooth_noise,
    smoothstep,
)
from pipeline.imaging.scene import Scene


def paint_crack(scene: Scene, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """A fissure from a rim point inwards (full ones may cross the whole face)."""
    s, geom = scene.scale, scene.geom
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ru, rv = geom.rim_point(angle)
    start = (ru + 1.5 * s * np.cos(angle), rv + 1.5 * s * np.sin(angle))
    heading = angle + np.pi + rng.uniform(-0.5, 0.5)
    if subtle:
        length = rng.uniform(0.40, 0.65) * geom.r_w
        width = rng.uniform(0.75, 0.95) * s
        depth = rng.uniform(0.32, 0.45)
    else:
        length = rng.uniform(0.9, 1.9) * geom.r_w
        width = rng.uniform(1.1, 1.8) * s
        depth = rng.uniform(0.55, 0.8)
    paths = [jagged_path(rng, start, heading, length, 2.0 * s, 0.12, 0.6 * s)]
    if not subtle and rng.random() < 0.4:
        trunk = paths[0]
        fork = trunk[rng.integers(len(trunk) // 3, max(len(trunk) // 3 + 1, 2 * len(trunk) // 3))]
        paths.append(
            jagged_path(
                rng,
                (float(fork[0]), float(fork[1])),
                heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.1),
                length * rng.uniform(0.25, 0.45),
                2.0 * s,
                0.12,
                0.6 * s,
            )
        )
    cover = np.zeros_like(scene.alpha)
    for i, path in enumerate(paths):
        dist = polyline_distance(scene.u, scene.v, path)
        np.maximum(cover, line_profile(dist, width * (0.7 if i else 1.0)), out=cover)
    cover *= scene.face
    scene.occlusion *= 1.0 - depth * cover
    scene.height -= (0.5 if subtle else 1.0) * s * cover
    return cover


def paint_chip(scene: Scene, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """A broken-off piece of the rim: missing core plus a lowered, rough fracture face."""
    s, geom = scene.scale, scene.geom
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ru, rv = geom.rim_point(angle)
    if subtle:
        radius = rng.uniform(0.13, 0.17) * geom.r_w
    else:
        radius = rng.uniform(0.20, 0.38) * geom.r_w
    cu = ru + 0.25 * radius * np.cos(angle)
    cv = rv + 0.25 * radius * np.sin(angle)
    du, dv = scene.u - cu, scene.v - cv
    theta = np.arctan2(dv, du)
    wobble = np.zeros_like(theta)
    for k in (2, 3, 5):
        wobble += rng.uniform(0.04, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    dist = np.sqrt(du * du + dv * dv) / (radius * (1.0 + wobble))
    core = 0.6
    missing = np.clip((core - dist) * radius + 0.5, 0.0, 1.0)
    fracture = (1.0 - smoothstep(core, 1.0, dist)) * (1.0 - missing)
    # The fracture face slopes down to the broken edge and is granular, unlike the smooth
    # rounded rim of a good tablet: it shades darker or brighter and looks rough.
    rough = smooth_noise(rng, scene.alpha.shape, 1.0 * s)
    grain = smooth_noise(rng, scene.alpha.shape, 0.7 * s)
    region = np.maximum(missing, fracture) * scene.alpha
    scene.alpha *= 1.0 - missing
    scene.height -= fracture * (rng.uniform(2.5, 4.0) * s) - fracture * rough * 0.5 * s
    scene.albedo *= (1.0 - fracture * (rng.uniform(0.03, 0.10) + 0.10 * grain))[..., None]
    scene.occlusion *= 1.0 - rng.uniform(0.10, 0.25) * fracture
    return region


def paint_discoloration(scene: Scene, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """An irregular blotch tinted towards the product's stain colour."""
    geom = scene.geom
    cu, cv = geom.face_point(rng, 0.3 * geom.r_w)
    if subtle:
        a = rng.uniform(0.12, 0.20) * geom.r_w
        strength = rng.uniform(0.22, 0.32)
    else:
        a = rng.uniform(0.20, 0.42) * geom.r_w
        strength = rng.uniform(0.40, 0.70)
    b = a * rng.uniform(0.55, 1.0)
    phi = rng.uniform(0.0, np.pi)
    du, dv = scene.u - cu, scene.v - cv
    x = (np.cos(phi) * du + np.sin(phi) * dv) / a
    y = (-np.sin(phi) * du + np.cos(phi) * dv) / b
    field = np.sqrt(x * x + y * y) + 0.22 * smooth_noise(rng, scene.alpha.shape, max(2.0, 0.6 * b))
    blot = (1.0 - smoothstep(0.7, 1.1, field)) * scene.face
    stain = np.asarray(scene.spec.stain, dtype=np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    tint = 1.0 + (stain - 1.0) * (strength * blot)[..., None]
    scene.albedo *= tint
    return blot


_CONTAMINANTS: tuple[tuple[float, float, float], ...] = (
    (0.05, 0.05, 0.05),  # black particle
    (0.30, 0.20, 0.12),  # brown (burnt granulate)
    (0.35, 0.36, 0.38),  # metallic grey (wear debris)
    (0.15, 0.22, 0.55),  # blue fibre (gown, glove)
    (0.55, 0.15, 0.12),  # red fibre
)


def paint_contamination(scene: Scene, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """Foreign matter on the face: an irregular speck (60 %) or a curved fibre (40 %)."""
    s, geom = scene.scale, scene.geom
    color = np.asarray(_CONTAMINANTS[rng.integers(len(_CONTAMINANTS))], dtype=np.float32)
    opacity = rng.uniform(0.55, 0.75) if subtle else rng.uniform(0.85, 1.0)
    cover = np.zeros_like(scene.alpha)
    if rng.random() < 0.6:
        cu, cv = geom.face_point(rng, 0.12 * geom.r_w)
        radius = (rng.uniform(0.9, 1.2) if subtle else rng.uniform(1.4, 2.8)) * s
        for _ in range(int(rng.integers(1, 4))):
            ou, ov = rng.normal(0.0, 0.5 * radius, 2)
            r = radius * rng.uniform(0.6, 1.0)
            dist = np.sqrt((scene.u - cu - ou) ** 2 + (scene.v - cv - ov) ** 2)
            np.maximum(cover, np.clip(r + 0.5 - dist, 0.0, 1.0), out=cover)
    else:
        cu, cv = geom.face_point(rng, 0.2 * geom.r_w)
        length = (rng.uniform(7.0, 12.0) if subtle else rng.uniform(12.0, 26.0)) * s
        width = (rng.uniform(0.6, 0.8) if subtle else rng.uniform(0.9, 1.3)) * s
        path = random_walk(rng, (cu, cv), rng.uniform(0, 2 * np.pi), length, 1.2 * s, 0.25, smooth=0.85)
        cover = line_profile(polyline_distance(scene.u, scene.v, path), width)
    cover = cover * opacity * scene.face
    scene.overlay_color = np.where(cover[..., None] > 0.0, color, scene.overlay_color)
    scene.overlay_alpha = np.maximum(scene.overlay_alpha, cover)
    return np.clip(cover / opacity, 0.0, 1.0)


# Each painter edits the scene and returns where the defect is (HxW, 0..1): the pixel truth
# used for dense supervision in training and for looking at what a model flags.
PAINTERS: dict[str, Callable[[Scene, np.random.Generator, bool], np.ndarray]] = {
    "crack": paint_crack,
    "chip": paint_chip,
    "discoloration": paint_discoloration,
    "contamination": paint_contamination,
}
