"""Drawing primitives of the held-out renderer (numpy only).

Images are float RGB arrays in [0, 1], drawn SS times supersampled and box-reduced at the end
(anti-aliased edges). Coordinates are in output pixels: pixel k covers [k, k + 1).
Shapes are signed distances (negative inside) turned into coverage; a unit's own frame (u, v)
is the image frame moved, turned and scaled by its pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SS = 2  # supersampling factor

Array = np.ndarray


@dataclass(frozen=True)
class Pose:
    """Where a unit lies: centre (px), turn (radians, counter-clockwise) and scale."""

    cx: float
    cy: float
    theta: float
    scale: float


def grid(h: int, w: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates of the supersampled canvas, in output pixels."""
    ys = (np.arange(h * SS) + 0.5) / SS
    xs = (np.arange(w * SS) + 0.5) / SS
    gx, gy = np.meshgrid(xs, ys)
    return gx, gy


def local(x: Array, y: Array, pose: Pose) -> tuple[Array, Array]:
    """Image coordinates -> the unit's own frame (u along its length, v across)."""
    dx, dy = x - pose.cx, y - pose.cy
    c, s = np.cos(pose.theta), np.sin(pose.theta)
    return (c * dx + s * dy) / pose.scale, (-s * dx + c * dy) / pose.scale


def coverage(d: Array, soft: float = 0.0) -> Array:
    """Fraction of a supersampled pixel inside the shape of signed distance `d` (px)."""
    width = 1.0 / SS + soft
    return np.clip(0.5 - d / width, 0.0, 1.0)


def paint(img: Array, cov: Array, colour: Array | tuple[float, float, float]) -> None:
    """Lay `colour` (RGB triple or an HxWx3 array) over `img` where `cov` > 0."""
    c = np.asarray(colour, dtype=np.float64)
    a = cov[..., None]
    img *= 1.0 - a
    img += a * c


def ellipse_sd(u: Array, v: Array, a: float, b: float) -> Array:
    """Approximate signed distance to an axis-aligned ellipse of half-axes a, b."""
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    g = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) + 1e-9
    return (r - 1.0) * r / g


def box_sd(u: Array, v: Array, hx: float, hy: float, r: float = 0.0) -> Array:
    """Signed distance to a rectangle of half-sizes hx, hy with corner radius r."""
    qx, qy = np.abs(u) - (hx - r), np.abs(v) - (hy - r)
    out = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return out + np.minimum(np.maximum(qx, qy), 0.0) - r


def segment_distance(u: Array, v: Array, points: Array) -> Array:
    """Distance to a polyline through `points` (N x 2, in the same frame as u, v)."""
    best = np.full(u.shape, np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.hypot(u - x0 - t * dx, v - y0 - t * dy))
    return best


def random_walk(rng: np.random.Generator, start: tuple[float, float], heading: float,
                length: float, step: float = 3.0, wiggle: float = 0.5) -> Array:
    """A jagged path (crack) of about `length` px from `start`."""
    pts = [start]
    x, y = start
    for _ in range(max(2, int(length / step))):
        heading += rng.normal(0.0, wiggle)
        x, y = x + step * np.cos(heading), y + step * np.sin(heading)
        pts.append((x, y))
    return np.asarray(pts)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> Array:
    """Low-frequency noise in [-1, 1] (bilinear over a random grid of `cell` px) on the canvas."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    g = rng.uniform(-1.0, 1.0, size=(gh, gw))

    def axis(n: int) -> tuple[Array, Array]:
        f = (np.arange(n * SS) + 0.5) / SS / cell
        i = np.floor(f).astype(int)
        t = f - i
        return i, t * t * (3 - 2 * t)

    iy, ty = axis(h)
    ix, tx = axis(w)
    rows = g[iy] * (1 - ty)[:, None] + g[iy + 1] * ty[:, None]  # separable: rows, then columns
    return np.asarray(rows[:, ix] * (1 - tx) + rows[:, ix + 1] * tx)


def gradient(h: int, w: int, angle: float, amount: float) -> Array:
    """A linear light fall-off across the canvas: 1 +- amount/2 along direction `angle`."""
    x, y = grid(h, w)
    t = ((x - w / 2) * np.cos(angle) + (y - h / 2) * np.sin(angle)) / max(h, w)
    return np.asarray(1.0 + amount * t)


def background(rng: np.random.Generator, h: int, w: int, base: tuple[float, float, float],
               texture: float) -> Array:
    """A textured background (conveyor belt or light panel) of colour `base`."""
    tex = texture * (0.7 * smooth_noise(rng, h, w, 24.0) + 0.3 * smooth_noise(rng, h, w, 5.0))
    img = np.empty((h * SS, w * SS, 3))
    img[:] = np.asarray(base)
    img += tex[..., None]
    return img


def _gauss_kernel(sigma: float) -> Array:
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return np.asarray(k / k.sum())


def blur(img: Array, sigma: float) -> Array:
    """Separable Gaussian blur (reflect-padded) of an HxWx3 image."""
    if sigma <= 0.05:
        return img
    k = _gauss_kernel(sigma)
    r = k.size // 2
    p = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="reflect")
    out = sum(k[i] * p[i:i + img.shape[0]] for i in range(k.size))
    p = np.pad(out, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return np.asarray(sum(k[i] * p[:, i:i + img.shape[1]] for i in range(k.size)))


def finish(rng: np.random.Generator, img: Array, light: Array, blur_sigma: float,
           noise: float) -> Array:
    """Lighting, box reduction, optics blur, sensor noise (read + shot) and 8-bit quantisation."""
    img = img * light[..., None]
    h, w = img.shape[0] // SS, img.shape[1] // SS
    img = img.reshape(h, SS, w, SS, 3).mean(axis=(1, 3))
    img = blur(img, blur_sigma)
    img = np.clip(img, 0.0, 1.0)
    sigma = np.sqrt(noise**2 + (noise * 0.8) ** 2 * img)
    img = img + rng.normal(0.0, 1.0, size=img.shape) * sigma
    return np.asarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8))
