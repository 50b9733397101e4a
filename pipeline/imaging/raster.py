"""Small numpy raster primitives shared by the renderers (tablets, vials, blister packs, labels).

Kept separate from the scene code so each piece is simple to read and test: pixel grids, smooth
noise, separable Gaussian blur, whole-pixel shifts, the camera's lighting falloff and sensor
noise, distance to a polyline and random-walk paths. Everything works on
float32 arrays and draws randomness only from the `np.random.Generator` it is given, so a
render is a pure function of its seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=16)
def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index grids [h, w] as float32 (read-only, shared between renders)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Zero-mean, unit-ish variance noise of 2-D `shape` (h, w) whose features are about `cell` pixels wide.

    Made by bicubic upsampling of a coarse random grid: cheap and free of tiling artefacts.
    """
    h, w = shape
    gh = max(2, int(np.ceil(h / cell)) + 2)
    gw = max(2, int(np.ceil(w / cell)) + 2)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    up = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    out = np.asarray(up, dtype=np.float32)
    std = float(out.std())
    return out / std if std > 1e-6 else out


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps covering +-3 sigma."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxW or HxWxC float array with reflected borders."""
    if sigma <= 0.05:
        return img
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    out = img.astype(np.float32, copy=False)
    pad_rows = [(r, r), (0, 0)] + [(0, 0)] * (out.ndim - 2)
    padded = np.pad(out, pad_rows, mode="reflect")
    n = out.shape[0]
    acc = k[0] * padded[0:n]
    for i in range(1, len(k)):
        acc += k[i] * padded[i : i + n]
    pad_cols = [(0, 0), (r, r)] + [(0, 0)] * (out.ndim - 2)
    padded = np.pad(acc, pad_cols, mode="reflect")
    n = out.shape[1]
    acc = k[0] * padded[:, 0:n]
    for i in range(1, len(k)):
        acc += k[i] * padded[:, i : i + n]
    return acc


def shift_px(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Shift a 2-D array by whole pixels (rounded), filling with zeros."""
    ix, iy = int(round(dx)), int(round(dy))
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(iy, 0) : h + min(iy, 0), max(ix, 0) : w + min(ix, 0)] = img[
        max(-iy, 0) : h + min(-iy, 0), max(-ix, 0) : w + min(-ix, 0)
    ]
    return out


def illumination(
    rng: np.random.Generator,
    shape: tuple[int, int],
    gradient: tuple[float, float] = (0.04, 0.16),
    vignetting: tuple[float, float] = (0.05, 0.35),
) -> np.ndarray:
    """Relative light [h, w] over a frame: a linear gradient (strength drawn from `gradient`, per
    frame size, random direction) times lens vignetting (drawn from `vignetting`, at the frame's
    longer side)."""
    h, w = shape
    ys, xs = pixel_grid(h, w)
    cx, cy, size = (w - 1) / 2.0, (h - 1) / 2.0, float(max(h, w))
    psi = rng.uniform(0.0, 2.0 * np.pi)
    grad = rng.uniform(*gradient) * ((xs - cx) * np.cos(psi) + (ys - cy) * np.sin(psi)) / size
    r2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / (size * size)
    return (1.0 + grad) * (1.0 - rng.uniform(*vignetting) * r2)


def sensor_noise(
    rng: np.random.Generator,
    img: np.ndarray,
    gain: tuple[float, float] = (1.5e-4, 4.0e-4),
    read: tuple[float, float] = (0.003, 0.008),
) -> np.ndarray:
    """`img` plus shot noise (variance grows with the signal, gain drawn from `gain`) and read
    noise (std drawn from `read`)."""
    g = rng.uniform(*gain)
    r = rng.uniform(*read)
    sigma = np.sqrt(g * np.clip(img, 0.0, None) + r * r)
    return img + sigma * rng.standard_normal(img.shape, dtype=np.float32)


def add_spot(
    img: np.ndarray, x: float, y: float, radius: float, value: np.ndarray | float, opacity: float = 1.0
) -> None:
    """Blend an anti-aliased disc of `value` into `img` (HxW or HxWxC) in place.

    Only the disc's bounding box is touched, so many small spots stay cheap.
    """
    h, w = img.shape[:2]
    x0, x1 = max(int(x - radius - 2), 0), min(int(x + radius + 3), w)
    y0, y1 = max(int(y - radius - 2), 0), min(int(y + radius + 3), h)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    cover = np.clip(radius + 0.5 - np.sqrt((xs - x) ** 2 + (ys - y) ** 2), 0.0, 1.0) * opacity
    if img.ndim == 3:
        cover = cover[..., None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - cover) + np.asarray(value, dtype=np.float32) * cover


def polyline_distance(u: np.ndarray, v: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance of every (u, v) sample to the polyline through `points` (Kx2, K >= 2)."""
    if len(points) < 2:
        raise ValueError("a polyline needs at least two points")
    best = np.full(u.shape, np.inf, dtype=np.float32)
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:], strict=True):
        dx, dy = bx - ax, by - ay
        seg2 = dx * dx + dy * dy
        if seg2 < 1e-9:
            continue
        t = np.clip(((u - ax) * dx + (v - ay) * dy) / seg2, 0.0, 1.0)
        px = ax + t * dx - u
        py = ay + t * dy - v
        np.minimum(best, np.sqrt(px * px + py * py), out=best)
    return best


def random_walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    length: float,
    step: float,
    wobble: float,
    smooth: float = 0.0,
) -> np.ndarray:
    """Points of a path that turns randomly at every step.

    `wobble` is the per-step turn (radians, std); `smooth` in [0, 1) carries part of the previous
    turn over, giving gentle curves (fibres) instead of jagged zig-zags (cracks).
    """
    n = max(2, int(np.ceil(length / step)) + 1)
    pts = np.empty((n, 2), dtype=np.float32)
    pts[0] = start
    turn = 0.0
    for i in range(1, n):
        turn = smooth * turn + (1.0 - smooth) * rng.normal(0.0, wobble)
        heading += turn
        pts[i] = pts[i - 1] + step * np.array([np.cos(heading), np.sin(heading)], dtype=np.float32)
    return pts


def jagged_path(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    length: float,
    step: float,
    drift: float,
    jag: float,
) -> np.ndarray:
    """A mostly straight path with sharp small zig-zags, the way brittle material fractures.

    The heading drifts slowly (`drift` radians per step) and every vertex is pushed sideways by
    up to `jag` pixels (std), so the line keeps its course but never runs smooth.
    """
    pts = random_walk(rng, start, heading, length, step, drift)
    if len(pts) > 2:
        seg = np.diff(pts, axis=0)
        normal = np.stack([-seg[:, 1], seg[:, 0]], axis=1) / step
        pts[1:-1] += normal[1:] * rng.normal(0.0, jag, (len(pts) - 2, 1)).astype(np.float32)
    return pts


def line_profile(dist: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a line of the given full width from a distance map."""
    return np.clip(width / 2.0 + 0.5 - dist, 0.0, 1.0) if width >= 1.0 else np.clip(
        (1.0 - dist) * width, 0.0, 1.0
    )


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
