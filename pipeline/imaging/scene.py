"""The tablet as a set of editable per-pixel layers, before lighting turns it into an image.

The renderer builds a `Scene` (shape coverage, surface height, albedo, occlusion, overlay) in
the tablet's own rotated coordinates; defect painters edit those layers; `scene_radiance`
then lights it. Painting defects into the physical layers (a chip lowers the surface, a crack
occludes it) keeps their look consistent with the lighting of each frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.imaging.products import TabletSpec


@dataclass(frozen=True)
class TabletGeometry:
    """Outline of one tablet in its local frame (pixels, centre at 0, long axis along u)."""

    shape: str
    r_len: float  # half length (radius for round tablets)
    r_w: float  # half width

    def sdf(self, u: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
        """Signed distance to the outline: negative inside, positive outside (pixels)."""
        u = np.asarray(u, dtype=np.float32)
        v = np.asarray(v, dtype=np.float32)
        if self.shape == "round":
            return np.sqrt(u * u + v * v) - self.r_w
        q = np.maximum(np.abs(u) - (self.r_len - self.r_w), 0.0)
        return np.sqrt(q * q + v * v) - self.r_w

    def rim_point(self, angle: float) -> tuple[float, float]:
        """Where a ray from the centre at `angle` crosses the outline."""
        lo, hi = 0.0, self.r_len + 1.0
        c, s = float(np.cos(angle)), float(np.sin(angle))
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            if float(self.sdf(mid * c, mid * s)) < 0.0:
                lo = mid
            else:
                hi = mid
        return lo * c, lo * s

    def face_point(self, rng: np.random.Generator, margin: float) -> tuple[float, float]:
        """A uniformly random point at least `margin` pixels inside the outline."""
        margin = min(margin, 0.9 * self.r_w)
        for _ in range(1000):
            u = rng.uniform(-self.r_len, self.r_len)
            v = rng.uniform(-self.r_w, self.r_w)
            if float(self.sdf(u, v)) < -margin:
                return u, v
        return 0.0, 0.0


@dataclass
class Scene:
    """Editable layers of one tablet, over the box of the frame that holds it.

    `u`, `v` are every pixel's coordinates in the tablet frame; `inside` is the distance into
    the tablet from its rim (negative outside). Painters edit `alpha` (material present),
    `height` (pixels, drives shading), `albedo` (HxWx3), `occlusion` (multiplicative darkening
    of crevices) and `overlay_*` (foreign matter lying on top).
    """

    spec: TabletSpec
    geom: TabletGeometry
    scale: float  # pixels per "reference pixel" (size / 160): keeps defects size-independent
    u: np.ndarray
    v: np.ndarray
    inside: np.ndarray
    alpha: np.ndarray
    height: np.ndarray
    albedo: np.ndarray
    occlusion: np.ndarray
    overlay_color: np.ndarray
    overlay_alpha: np.ndarray
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1): where these layers sit in the frame

    @property
    def face(self) -> np.ndarray:
        """Soft mask of the tablet's top face (0 outside, 1 well inside)."""
        return np.clip(self.inside, 0.0, 1.0)


def scene_radiance(
    scene: Scene, light: np.ndarray, ambient: float
) -> np.ndarray:
    """Light the tablet: Lambert shading of the height field, occlusion, then overlay.

    `light` is the unit vector towards the light (x right, y down, z up to the camera).
    A flat surface gets exactly 1.0 so albedo keeps its meaning.
    """
    gy, gx = np.gradient(scene.height)
    norm = np.sqrt(gx * gx + gy * gy + 1.0)
    ndotl = (-gx * light[0] - gy * light[1] + light[2]) / norm
    shade = ambient + (1.0 - ambient) * np.maximum(ndotl, 0.0) / light[2]
    shade = shade * scene.occlusion
    rad = scene.albedo * shade[..., None]
    oa = scene.overlay_alpha[..., None]
    overlay = scene.overlay_color * (ambient + (1.0 - ambient) * np.maximum(ndotl, 0.0)[..., None] / light[2])
    return rad * (1.0 - oa) + overlay * oa
