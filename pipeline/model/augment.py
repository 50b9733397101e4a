"""Batched training augmentation on preprocessed tensors (torch, seeded).

Each transform mimics a nuisance the line really has, so the classifier learns the defect and
not the frame: flips and rotation (units land in any orientation), small shifts (timing of the
trigger), brightness/contrast and colour gain (lamp ageing, lot tint), blur (focus, motion) and
noise (sensor gain). All randomness comes from the given `torch.Generator`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _blur3(x: torch.Tensor) -> torch.Tensor:
    """Fixed 3x3 binomial blur (sigma ~0.8 px), per channel."""
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype)
    k = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 3, 3).contiguous()
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


def augment(
    x: torch.Tensor, g: torch.Generator, mask: torch.Tensor | None = None, max_shift_px: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Randomly transformed copy of a batch x [N, 3, S, S] (normalised model inputs).

    `mask` [N, M, M] (defect masks at any resolution) gets the same geometric transforms.
    """
    n, _, s, _ = x.shape
    flip_h = torch.rand(n, generator=g) < 0.5
    flip_v = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    if mask is not None:
        mask = torch.where(flip_h[:, None, None], mask.flip(2), mask)
        mask = torch.where(flip_v[:, None, None], mask.flip(1), mask)

    # Rotation + shift for half of the batch (interpolation softens edges; keep some crisp).
    warp = torch.rand(n, generator=g) < 0.5
    if bool(warp.any()):
        angle = _uniform(g, n, -math.pi, math.pi)
        shift = _uniform(g, 2 * n, -1.0, 1.0).view(n, 2) * (2.0 * max_shift_px / s)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta[warp], list(x[warp].shape), align_corners=False)
        warped = F.grid_sample(x[warp], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = x.clone()
        x[warp] = warped
        if mask is not None:
            m = mask[warp][:, None]
            grid_m = F.affine_grid(theta[warp], list(m.shape), align_corners=False)
            mask = mask.clone()
            mask[warp] = F.grid_sample(m, grid_m, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]

    # Photometric: contrast, brightness, per-channel gain (white balance) in normalised units.
    contrast = _uniform(g, n, 0.85, 1.15)[:, None, None, None]
    brightness = _uniform(g, n, -0.15, 0.15)[:, None, None, None]
    gain = _uniform(g, 3 * n, 0.96, 1.04).view(n, 3, 1, 1)
    x = x * contrast * gain + brightness

    # Blur: blend towards a blurred copy by a random amount, for 30 % of the batch.
    amount = _uniform(g, n, 0.0, 0.7) * (torch.rand(n, generator=g) < 0.3)
    x = x + amount[:, None, None, None] * (_blur3(x) - x)

    # Sensor noise for 30 % of the batch.
    sigma = _uniform(g, n, 0.0, 0.05) * (torch.rand(n, generator=g) < 0.3)
    return x + sigma[:, None, None, None] * torch.randn(x.shape, generator=g), mask
