"""Synthetic anomalies made from good images (good-only training; auxiliary in supervised).

A good-only model has no defect images to learn from, so it learns "good" against generic
perturbations of good units (CutPaste / DRAEM-style self-supervision). None of them uses the
simulator's defect renderer or its defect classes: they are deliberately generic so the model
learns "deviates from good", not one camera's rendering of four named defects.

- `patch`: a patch cut from elsewhere in the same frame, turned/flipped, tinted, pasted on the unit;
- `blob`: an irregular blob of a foreign colour, soft-edged, partly transparent;
- `stroke`: a thin dark or light random polyline (1-2 px);
- `shade`: a local smooth darkening or brightening;
- `bite`: a piece of the unit's outline replaced by the background (an edge bite).

All work on normalised model inputs (torch tensors [3, H, W]) with a `torch.Generator`, and
return the changed image and its mask (1 where the image was changed) so the model's
segmentation head gets dense supervision. Anomalies are placed on the unit: the foreground is
whatever differs from the frame border's median colour.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS: tuple[str, ...] = ("patch", "blob", "stroke", "shade", "bite")


def _rand(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return lo + int(torch.randint(0, hi - lo + 1, (1,), generator=g))


def background(x: torch.Tensor) -> torch.Tensor:
    """Median colour of the 4-px frame border: [3, 1, 1]."""
    b = torch.cat([x[:, :4].flatten(1), x[:, -4:].flatten(1), x[:, :, :4].flatten(1), x[:, :, -4:].flatten(1)], 1)
    return b.median(dim=1).values[:, None, None]


def foreground(x: torch.Tensor) -> torch.Tensor:
    """Bool [H, W]: pixels that differ clearly from the border colour (the unit)."""
    smooth = F.avg_pool2d(x[None], 5, 1, 2, count_include_pad=False)[0]
    d = (smooth - background(x)).abs().sum(0)
    fg = d > max(0.6, 0.5 * float(torch.quantile(d.flatten(), 0.99)))
    if int(fg.sum()) < 16:  # flat frame: anywhere but the border
        fg = torch.zeros_like(fg)
        h, w = x.shape[-2:]
        fg[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    return fg


def _center(fg: torch.Tensor, g: torch.Generator, inner: bool = True) -> tuple[int, int]:
    """A random pixel of the unit (away from its outline when `inner`)."""
    cand = fg
    if inner:
        eroded = -F.max_pool2d(-fg[None, None].float(), 9, 1, 4)[0, 0] > 0.5
        if int(eroded.sum()) > 0:
            cand = eroded
    idx = torch.nonzero(cand)
    k = int(torch.randint(0, len(idx), (1,), generator=g))
    return int(idx[k, 0]), int(idx[k, 1])


def _grid(hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = hw
    return (torch.arange(h, dtype=torch.float32)[:, None].expand(h, w),
            torch.arange(w, dtype=torch.float32)[None, :].expand(h, w))


def _blob_mask(hw: tuple[int, int], cy: int, cx: int, radius: float, g: torch.Generator) -> torch.Tensor:
    """Soft irregular blob [H, W] in [0, 1] around (cy, cx)."""
    yy, xx = _grid(hw)
    ang = torch.atan2(yy - cy, xx - cx)
    r = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    wobble = torch.zeros_like(ang)
    for k in (2, 3, 5):
        wobble = wobble + _rand(g, 0.0, 0.25) * torch.cos(k * ang + _rand(g, 0, 2 * math.pi))
    edge = radius * (1.0 + wobble)
    return torch.clamp((edge - r) / 1.5 + 0.5, 0.0, 1.0)


def _stroke_mask(hw: tuple[int, int], cy: int, cx: int, g: torch.Generator) -> torch.Tensor:
    yy, xx = _grid(hw)
    n = _randint(g, 2, 5)
    length = _rand(g, 8.0, 30.0)
    ang = _rand(g, 0.0, 2 * math.pi)
    pts = [(float(cy), float(cx))]
    for _ in range(n):
        ang += _rand(g, -0.8, 0.8)
        step = length / n
        pts.append((pts[-1][0] + step * math.sin(ang), pts[-1][1] + step * math.cos(ang)))
    dist = torch.full(hw, 1e9)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
        dy, dx = y1 - y0, x1 - x0
        t = (((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6)).clamp(0, 1)
        d = torch.sqrt((yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2)
        dist = torch.minimum(dist, d)
    width = _rand(g, 0.5, 1.4)
    return torch.clamp(width + 0.5 - dist, 0.0, 1.0)


def synthesize(x: torch.Tensor, g: torch.Generator, kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One anomalous copy of a good image x [3, H, W] and its soft mask [H, W]."""
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    h, w = hw
    kind = kind or KINDS[int(torch.randint(0, len(KINDS), (1,), generator=g))]
    fg = foreground(x)
    scale = math.sqrt(h * w) / 160.0
    if kind == "patch":
        ph, pw = _randint(g, int(6 * scale) + 2, int(20 * scale) + 2), _randint(g, int(6 * scale) + 2, int(20 * scale) + 2)
        ph, pw = min(ph, min(h, w) // 2), min(pw, min(h, w) // 2)
        sy, sx = _randint(g, 0, h - ph), _randint(g, 0, w - pw)
        patch = x[:, sy : sy + ph, sx : sx + pw]
        patch = torch.rot90(patch, _randint(g, 0, 3), dims=(1, 2))
        if _rand(g) < 0.5:
            patch = patch.flip(2)
        patch = patch * _rand(g, 0.7, 1.3) + torch.empty(3, 1, 1).uniform_(-0.4, 0.4, generator=g)
        ph, pw = patch.shape[1:]
        cy, cx = _center(fg, g)
        y0, x0 = min(max(cy - ph // 2, 0), h - ph), min(max(cx - pw // 2, 0), w - pw)
        m = torch.zeros(h, w)
        m[y0 : y0 + ph, x0 : x0 + pw] = 1.0
        canvas = x.clone()
        canvas[:, y0 : y0 + ph, x0 : x0 + pw] = patch
        alpha = m * _rand(g, 0.6, 1.0)
        out = x + alpha * (canvas - x)
    elif kind == "blob":
        cy, cx = _center(fg, g)
        m = _blob_mask(hw, cy, cx, _rand(g, 1.5, 7.0) * scale, g)
        colour = torch.empty(3, 1, 1).uniform_(-2.0, 2.0, generator=g)
        alpha = m * _rand(g, 0.35, 1.0)
        out = x + alpha * (colour - x)
    elif kind == "stroke":
        cy, cx = _center(fg, g)
        m = _stroke_mask(hw, cy, cx, g)
        delta = _rand(g, 0.4, 1.5) * (1.0 if _rand(g) < 0.3 else -1.0)
        out = x + m * delta
    elif kind == "shade":
        cy, cx = _center(fg, g)
        yy, xx = _grid(hw)
        sigma = _rand(g, 2.5, 8.0) * scale
        bump = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma * sigma))
        tint = 1.0 + torch.empty(3, 1, 1).uniform_(-0.15, 0.15, generator=g)
        gain = _rand(g, 0.3, 0.7) * (1.0 if _rand(g) < 0.5 else -1.0)
        out = x + bump * gain * tint * (x.abs().mean() + 0.5)
        m = (bump > 0.1).float() * bump
    elif kind == "bite":
        # A disk centred just outside/on the unit's outline, filled with the background.
        edge = fg & ~(-F.max_pool2d(-fg[None, None].float(), 3, 1, 1)[0, 0] > 0.5)
        idx = torch.nonzero(edge)
        if len(idx) == 0:
            return synthesize(x, g, "blob")
        k = int(torch.randint(0, len(idx), (1,), generator=g))
        cy, cx = int(idx[k, 0]), int(idx[k, 1])
        m = _blob_mask(hw, cy, cx, _rand(g, 2.5, 8.0) * scale, g) * fg.float()
        fill = background(x) + 0.05 * torch.randn(x.shape, generator=g)
        out = x + m * (fill - x)
    else:
        raise ValueError(f"unknown synthetic anomaly kind {kind!r} (known: {', '.join(KINDS)})")
    return out, m


def synthesize_batch(x: torch.Tensor, g: torch.Generator, mask_stride: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomalous copies of a batch of good images [N, 3, H, W] and their coarse masks [N, H/k, W/k]."""
    outs, masks = [], []
    for i in range(x.shape[0]):
        o, m = synthesize(x[i], g)
        outs.append(o)
        masks.append(m)
    mask = torch.stack(masks)[:, None]
    coarse = (F.max_pool2d(mask, mask_stride) > 0.2).float()[:, 0]
    return torch.stack(outs), coarse
