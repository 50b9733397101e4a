"""The OpenCV operations of the measurement kernels return exactly what the Python loops they
replaced returned (those loops are kept here as the reference), so measurements are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.inspections.cvops import (
    channel_mean,
    channel_mean_max,
    channel_sum,
    convex_hull,
    dilate,
    erode,
    group_sizes,
)


def _ref_morph(mask: np.ndarray, size: int, op: str) -> np.ndarray:
    """The blister kernel's former erosion ('min') / dilation ('max'): numpy shifts per axis."""
    combine = np.logical_and if op == "min" else np.logical_or
    r = size // 2

    def along_rows(a: np.ndarray) -> np.ndarray:
        n = a.shape[0]
        padded = np.zeros((n + 2 * r, a.shape[1]), dtype=bool)
        padded[r : r + n] = a
        acc = padded[0:n].copy()
        for k in range(1, 2 * r + 1):
            combine(acc, padded[k : k + n], out=acc)
        return acc

    return along_rows(along_rows(np.asarray(mask, dtype=bool)).T).T


def _ref_blobs(mask: np.ndarray) -> list[int]:
    """The vial kernel's former flood fill: groups of pixels within Chebyshev distance 2."""
    left = {(int(r), int(c)) for r, c in zip(*np.nonzero(mask), strict=True)}
    sizes = []
    while left:
        stack = [left.pop()]
        n = 1
        while stack:
            r, c = stack.pop()
            for dr in range(-2, 3):
                for dc in range(-2, 3):
                    q = (r + dr, c + dc)
                    if q in left:
                        left.remove(q)
                        stack.append(q)
                        n += 1
        sizes.append(n)
    return sorted(sizes)


def _ref_hull(points: np.ndarray) -> np.ndarray:
    """The blister kernel's former hull: Andrew's monotone chain."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    pts = [(float(a), float(b)) for a, b in points[order]]
    if len(pts) < 3:
        return np.asarray(pts, dtype=np.float64)

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for p in seq:
            while len(out) >= 2 and (
                (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1]) - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])
            ) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _row_extremes(mask: np.ndarray) -> np.ndarray:
    rows = np.nonzero(mask.any(axis=1))[0]
    sub = mask[rows]
    first = sub.argmax(axis=1)
    last = mask.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    return np.concatenate([np.stack([first, rows], 1), np.stack([last, rows], 1)]).astype(np.float64)


def _masks(seed: int, n: int) -> list[np.ndarray]:
    """Sparse speckle, dense noise, discs, rotated rectangles, single pixels, lines, empty."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = rng.integers(3, 60, size=2)
        kind = i % 6
        if kind == 0:
            m = rng.random((h, w)) > rng.uniform(0.9, 0.995)
        elif kind == 1:
            m = rng.random((h, w)) > 0.5
        elif kind in (2, 3):
            yy, xx = np.mgrid[0:h, 0:w]
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.5, 25)
            m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            if kind == 3:  # a bite out of it
                m &= (xx - cx - r) ** 2 + (yy - cy) ** 2 > (0.5 * r) ** 2
        elif kind == 4:
            yy, xx = np.mgrid[0:h, 0:w]
            a = rng.uniform(-0.8, 0.8)
            u = np.cos(a) * (xx - w / 2) + np.sin(a) * (yy - h / 2)
            v = -np.sin(a) * (xx - w / 2) + np.cos(a) * (yy - h / 2)
            m = (np.abs(u) < rng.uniform(0.5, w / 2)) & (np.abs(v) < rng.uniform(0.5, h / 2))
        else:
            m = np.zeros((h, w), bool)
            for _ in range(rng.integers(0, 3)):
                m[rng.integers(0, h), rng.integers(0, w)] = True
            if rng.random() < 0.5:
                m[rng.integers(0, h), :] = True
        out.append(m)
    return out


def test_channel_mean_max_is_bit_identical() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (97, 61, 3), dtype=np.uint8)
    f = rgb.astype(np.float32) * (1.0 / 255.0)
    mean, top = channel_mean_max(rgb)
    assert mean.dtype == np.float32 and np.array_equal(mean, f.mean(axis=2))
    assert np.array_equal(top, f.max(axis=2))


def test_channel_sum_and_mean_are_bit_identical_on_floats() -> None:
    rng = np.random.default_rng(1)
    for a in (rng.random((40, 30, 3), dtype=np.float32), rng.normal(size=(500, 3)).astype(np.float32), rng.random((7, 3))):
        assert np.array_equal(channel_sum(a), a.sum(axis=-1))
        assert channel_mean(a).dtype == a.dtype and np.array_equal(channel_mean(a), a.mean(axis=-1))


@pytest.mark.parametrize("size", [3, 5])
def test_erode_dilate_match_the_shift_loops(size: int) -> None:
    for m in _masks(1, 120):
        assert np.array_equal(erode(m, size), _ref_morph(m, size, "min"))
        assert np.array_equal(dilate(m, size), _ref_morph(m, size, "max"))


def test_group_sizes_match_the_flood_fill() -> None:
    for m in _masks(2, 240):
        assert sorted(group_sizes(m, 2).tolist()) == _ref_blobs(m)
    two_apart = np.zeros((5, 9), bool)
    two_apart[2, [1, 3, 6]] = True  # 1 and 3 join (distance 2), 6 stays apart (distance 3)
    assert sorted(group_sizes(two_apart, 2).tolist()) == [1, 2]


def test_convex_hull_matches_the_monotone_chain() -> None:
    for m in _masks(3, 360):
        if not m.any():
            continue
        pts = _row_extremes(m)
        assert np.array_equal(convex_hull(pts), _ref_hull(pts)), m.astype(int)
    for pts in ([[0, 0]], [[3, 1], [0, 2]], [[1, 1], [1, 1], [1, 1]], [[0, 0], [2, 2], [1, 1], [4, 4]]):
        a = np.asarray(pts, dtype=np.float64)
        assert np.array_equal(convex_hull(a), _ref_hull(a))


def test_convex_hull_refuses_non_integer_points() -> None:
    with pytest.raises(ValueError, match="integer"):
        convex_hull(np.asarray([[0.5, 0], [1, 0], [0, 1]]))
