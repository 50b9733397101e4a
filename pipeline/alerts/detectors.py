"""Pure alert detectors: no I/O, no clock; each is fed observations and answers a state.

- `PChart`: the SPC p-chart of the reject fraction per interval. Centre line p̄ = Σ rejects / Σ n
  over the baseline intervals (the last `baseline` in-control intervals, out-of-control ones are
  kept out of the baseline), limits p̄ ± 3·sqrt(p̄(1-p̄)/n) for an interval of n units.
- `RunDetector`: N consecutive rejects.
- `DriftDetector`: population stability index (PSI) of the recent scores against a reference:
  the model's validation scores when given, else the first `baseline_n` scores the line produced
  under the model version (a baseline window; documented in docs/alerts.md).
- `frame_quality` / `QualityDetector`: brightness, clipped-highlight fraction and sharpness
  (variance of the Laplacian) of a grayscale frame; `FrozenDetector`: identical consecutive frames.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


# ---------------------------------------------------------------- SPC p-chart
@dataclass(frozen=True)
class PPoint:
    start_ns: int
    n: int
    rejects: int
    p: float
    center: float | None
    lcl: float | None
    ucl: float | None

    @property
    def out_of_control(self) -> bool:
        return self.ucl is not None and self.p > self.ucl


def p_limits(p_bar: float, n: int, sigmas: float = 3.0) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    half = sigmas * math.sqrt(max(p_bar * (1.0 - p_bar), 0.0) / n)
    return max(0.0, p_bar - half), min(1.0, p_bar + half)


class PChart:
    """Completed intervals with their limits; `add` returns the judged point."""

    def __init__(self, baseline: int = 30, min_baseline: int = 5, keep: int = 120, min_n: int = 5) -> None:
        self.baseline: deque[tuple[int, int]] = deque(maxlen=baseline)
        self.points: deque[PPoint] = deque(maxlen=keep)
        self.min_baseline = min_baseline
        self.min_n = min_n

    def center(self) -> float | None:
        if len(self.baseline) < self.min_baseline:
            return None
        n = sum(b[0] for b in self.baseline)
        return sum(b[1] for b in self.baseline) / n if n else None

    def add(self, start_ns: int, n: int, rejects: int) -> PPoint:
        p = rejects / n if n else 0.0
        center = self.center()
        lcl = ucl = None
        if center is not None and n >= self.min_n:
            lcl, ucl = p_limits(center, n)
        point = PPoint(start_ns, n, rejects, p, center, lcl, ucl)
        self.points.append(point)
        if n >= self.min_n and not point.out_of_control:
            self.baseline.append((n, rejects))
        return point


# ---------------------------------------------------------------- run of rejects
class RunDetector:
    def __init__(self, length: int = 8) -> None:
        self.length = length
        self.run = 0

    def observe(self, rejected: bool) -> bool:
        """True while the current run of consecutive rejects is at least `length`."""
        self.run = self.run + 1 if rejected else 0
        return self.run >= self.length


# ---------------------------------------------------------------- score drift
def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index over quantile bins of the reference (scores in [0, 1])."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    if ref.size == 0 or cur.size == 0:
        return 0.0
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / ref.size
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / cur.size
    r = np.clip(r, eps, None)
    c = np.clip(c, eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max CDF distance); reported with the PSI."""
    x = np.sort(np.asarray(a, dtype=float))
    y = np.sort(np.asarray(b, dtype=float))
    if x.size == 0 or y.size == 0:
        return 0.0
    grid = np.concatenate([x, y])
    return float(np.max(np.abs(np.searchsorted(x, grid, "right") / x.size - np.searchsorted(y, grid, "right") / y.size)))


class DriftDetector:
    """PSI of the last `window` scores against the reference, with hysteresis."""

    def __init__(
        self, reference: Sequence[float] | None = None, baseline_n: int = 300, window: int = 200,
        raise_psi: float = 0.25, clear_psi: float = 0.10, every: int = 20,
    ) -> None:
        self.reference: list[float] = list(reference or [])
        self.fixed = reference is not None and len(self.reference) > 0
        self.baseline_n = baseline_n
        self.recent: deque[float] = deque(maxlen=window)
        self.raise_psi = raise_psi
        self.clear_psi = clear_psi
        self.every = every
        self.active = False
        self.last_psi = 0.0
        self.last_ks = 0.0
        self._since = 0

    def observe(self, score: float) -> bool | None:
        """Feed one score; returns the drift state when (re)evaluated, None otherwise."""
        if not self.fixed and len(self.reference) < self.baseline_n:
            self.reference.append(score)
            return None
        self.recent.append(score)
        self._since += 1
        if len(self.recent) < self.recent.maxlen or self._since < self.every:  # type: ignore[operator]
            return None
        self._since = 0
        self.last_psi = psi(self.reference, self.recent)
        self.last_ks = ks_statistic(self.reference, self.recent)
        if self.active:
            self.active = self.last_psi > self.clear_psi
        else:
            self.active = self.last_psi > self.raise_psi
        return self.active


# ---------------------------------------------------------------- image quality
@dataclass(frozen=True)
class FrameQuality:
    mean: float          # mean gray level, 0..255
    clipped: float       # fraction of pixels at >= 250
    sharpness: float     # variance of the 4-neighbour Laplacian
    digest: str          # sha1 of the pixels (frozen-frame detection)


def frame_quality(gray: np.ndarray) -> FrameQuality:
    g = np.asarray(gray, dtype=np.float32)
    lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1])
    return FrameQuality(
        mean=float(g.mean()),
        clipped=float((g >= 250).mean()),
        sharpness=float(lap.var()) if lap.size else 0.0,
        digest=hashlib.sha1(np.ascontiguousarray(gray).tobytes()).hexdigest(),
    )


@dataclass(frozen=True)
class QualityLimits:
    dark_mean: float = 20.0
    bright_mean: float = 200.0
    clipped_fraction: float = 0.3
    min_sharpness: float = 20.0


def quality_problems(q: FrameQuality, limits: QualityLimits = QualityLimits()) -> set[str]:
    problems: set[str] = set()
    if q.mean < limits.dark_mean:
        problems.add("image_dark")
    if q.mean > limits.bright_mean or q.clipped > limits.clipped_fraction:
        problems.add("image_overexposed")
    if q.sharpness < limits.min_sharpness and "image_dark" not in problems:
        problems.add("image_blurred")
    return problems


class QualityDetector:
    """A problem is active after `raise_after` consecutive frames with it, cleared after
    `clear_after` consecutive frames without it (one bad frame is noise, a camera fault persists)."""

    KINDS = ("image_dark", "image_overexposed", "image_blurred")

    def __init__(self, raise_after: int = 5, clear_after: int = 5) -> None:
        self.raise_after = raise_after
        self.clear_after = clear_after
        self.bad = dict.fromkeys(self.KINDS, 0)
        self.good = dict.fromkeys(self.KINDS, 0)
        self.active = dict.fromkeys(self.KINDS, False)

    def observe(self, problems: set[str]) -> dict[str, bool]:
        for kind in self.KINDS:
            if kind in problems:
                self.bad[kind] += 1
                self.good[kind] = 0
                if self.bad[kind] >= self.raise_after:
                    self.active[kind] = True
            else:
                self.good[kind] += 1
                self.bad[kind] = 0
                if self.good[kind] >= self.clear_after:
                    self.active[kind] = False
        return dict(self.active)


class FrozenDetector:
    """Identical consecutive frames from one camera: `repeats` in a row is a frozen camera."""

    def __init__(self, repeats: int = 3) -> None:
        self.repeats = repeats
        self.last: dict[str, str] = {}
        self.count: dict[str, int] = {}

    def observe(self, camera: str, digest: str) -> bool:
        if self.last.get(camera) == digest:
            self.count[camera] = self.count.get(camera, 1) + 1
        else:
            self.count[camera] = 1
        self.last[camera] = digest
        return any(c >= self.repeats for c in self.count.values())
