"""Image operations the measurement kernels share: OpenCV (headless) and loop-free numpy.

Why: these steps were Python loops (a flood fill for the vial's particles, a monotone-chain hull
per blister pocket and per pack), numpy shifts driven from Python (square erosion, dilation) and
numpy's slow reduction over a 3-long colour axis, all run inside Triton's python backend on every
frame. OpenCV's C++ does the same work in microseconds and imports in that backend's environment
with numpy < 2 (opencv-python-headless < 4.12; 4.12 and later require numpy 2). scipy.ndimage was
measured too (docs/benchmarks.md): binary erosion ~60x and labelling ~1.7x the time of OpenCV's,
and scipy's hull (qhull) is floating-point where pixel hulls are exact in integers.

Every function here returns exactly what the code it replaced returned (tests/unit/test_cvops.py
checks them against those loops), so measurements stay the same bit for bit.

OpenCV's own thread pool is turned off: a Triton python model scales by instances (processes),
one frame per core; extra threads per frame would only contend with the other instances.
"""

from __future__ import annotations

import cv2
import numpy as np

cv2.setNumThreads(1)

_OUTSIDE = (0.0,)  # border value: pixels outside the array are background


def channel_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the last (colour) axis of a float [..., 3] array.

    Bit-identical to ``a.sum(axis=-1)`` (numpy adds the three in the same order) without numpy's
    slow reduction over a 3-long innermost axis (~15x the time on a frame)."""
    out = a[..., 0] + a[..., 1]
    out += a[..., 2]
    return out


def channel_mean(a: np.ndarray) -> np.ndarray:
    """``a.mean(axis=-1)`` of a float [..., 3] array, bit-identical (see `channel_sum`)."""
    out = channel_sum(a)
    out /= 3
    return out


def channel_mean_max(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and max over the colour channels of a uint8 [H, W, 3] frame, float32 in 0..1;
    bit-identical to ``f.mean(axis=2), f.max(axis=2)`` (see `channel_sum`)."""
    f = rgb.astype(np.float32) * (1.0 / 255.0)
    return channel_mean(f), np.maximum(np.maximum(f[..., 0], f[..., 1]), f[..., 2])


def _as_u8(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask, dtype=np.uint8)


def erode(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary erosion with a size x size square (size odd); outside the array is background,
    so an object cut by the border erodes from it."""
    kernel = np.ones((size, size), np.uint8)
    out = cv2.erode(_as_u8(mask), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=_OUTSIDE)
    return out.astype(bool)


def dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation with a size x size square (size odd); outside the array is background."""
    kernel = np.ones((size, size), np.uint8)
    out = cv2.dilate(_as_u8(mask), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=_OUTSIDE)
    return out.astype(bool)


def group_sizes(mask: np.ndarray, reach: int) -> np.ndarray:
    """Pixel counts of the groups of True pixels in which any two pixels within Chebyshev
    distance `reach` are joined (a fibre fading in and out stays one particle).

    Each pixel becomes a reach x reach box (padded so none is clipped); two boxes are
    8-connected exactly when their pixels are within `reach`, so the boxes' connected
    components are the groups. The order of the groups is OpenCV's label order."""
    if reach < 1:
        raise ValueError(f"reach must be >= 1, got {reach}")
    m = np.pad(_as_u8(mask), reach)
    if not m.any():
        return np.zeros(0, dtype=np.int64)
    boxes = cv2.dilate(m, np.ones((reach, reach), np.uint8), anchor=(0, 0), borderType=cv2.BORDER_CONSTANT, borderValue=_OUTSIDE)
    n, labels = cv2.connectedComponents(boxes, connectivity=8)
    return np.bincount(labels[m.astype(bool)], minlength=n)[1:]


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of integer-valued (x, y) points [N, 2] -> vertices [M, 2] float64.

    The same vertices in the same order as Andrew's monotone chain: counter-clockwise (x right,
    y up), collinear and repeated points dropped, starting at the smallest (x, y); fewer than 3
    points come back sorted, and a degenerate (collinear) set as [smallest, largest]. Callers
    derive angles and centres from the vertex order, so the order is kept, not just the set."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    ipts = pts.astype(np.int32)
    if not np.array_equal(ipts, pts):
        raise ValueError("convex_hull takes integer-valued points (pixel coordinates)")
    hull = _drop_straight(cv2.convexHull(ipts, clockwise=False).reshape(-1, 2).astype(np.int64))
    if len(hull) < 3:
        order = np.lexsort((pts[:, 1], pts[:, 0]))
        return pts[[order[0], order[-1]]]
    x, y = hull[:, 0], hull[:, 1]
    nxt = np.arange(1, len(hull) + 1) % len(hull)
    if int(x @ y[nxt] - y @ x[nxt]) < 0:
        hull, x, y = hull[::-1], x[::-1], y[::-1]
    lowest_x = np.flatnonzero(x == x.min())
    start = int(lowest_x[np.argmin(y[lowest_x])])
    return np.concatenate((hull[start:], hull[:start])).astype(np.float64)


def _drop_straight(hull: np.ndarray) -> np.ndarray:
    """Remove repeated vertices, then those on a straight line between their neighbours."""
    n = len(hull)
    if n > 1:
        hull = hull[np.any(hull != hull[np.arange(-1, n - 1)], axis=1)]
        n = len(hull)
    if n < 3:
        return hull
    prev, nxt = hull[np.arange(-1, n - 1)], hull[np.arange(1, n + 1) % n]
    cross = (hull[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - (hull[:, 1] - prev[:, 1]) * (nxt[:, 0] - prev[:, 0])
    # With no repeats, a vertex of a convex polygon with zero turn lies inside an edge: dropping
    # all of them at once leaves the corners, whose turn keeps its sign.
    return hull[cross != 0]
