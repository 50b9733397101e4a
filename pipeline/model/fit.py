"""Supervised training loop and batched inference of the tablet classifier (torch, CPU).

Deterministic for a given seed and thread count: seeded init, a seeded generator for shuffling
and augmentation, deterministic torch algorithms, single-process data feeding.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.model.augment import augment
from pipeline.model.base import adapt_norm, init_from_base
from pipeline.model.data import LabelledImages
from pipeline.model.net import SEG_STRIDE, Classifier, ServingModel, TabletNet
from pipeline.model.synthetic import synthesize_batch

TRAIN_THREADS = 2


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings recorded in the model card."""

    epochs: int = 14
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    # Dense supervision from defect masks (rendered sets and synthetic anomalies): weight and
    # positive-cell weight.
    seg_weight: float = 1.0
    seg_pos_weight: float = 10.0
    # Counterfactual pairs (rendered pairs, or a good image and its synthetic anomaly): the
    # defective unit must out-score its own defect-free twin by `rank_margin` logits. Both share
    # every nuisance, so this gradient is all about the defect.
    rank_weight: float = 1.0
    rank_margin: float = 2.0
    augment: bool = True
    # Blur reach of the augmentation (pipeline.model.augment: blend factor towards the 3x3 blur,
    # beyond 1 towards it applied twice, sigma ~1.1 px) and the share of images blurred: another
    # session's focus must not read as a defect (measured in docs/models.md).
    blur_max: float = 2.0
    blur_chance: float = 0.5
    # `supervised`: learn the labelled classes; `good-only`: good images against synthetic
    # anomalies made from them (classes good, anomaly).
    mode: str = "supervised"
    # Supervised on unpaired data: this many (good, synthetic anomaly) pairs join every batch,
    # labelled with a training-only extra class that is not served (0 = off).
    aux_pairs: int = 0
    # The flips/turns augmentation may use: the product's declared invariance
    # (pipeline.model.geometry; 8 = every flip and quarter turn, 1 = none).
    views: int = 8
    # TabletNet's pooling ("mean" or "mean+max"; pipeline.model.net).
    pool: str = "mean"


@contextlib.contextmanager
def deterministic_torch(threads: int = TRAIN_THREADS) -> Iterator[None]:
    """Fixed thread count and deterministic algorithms for the block, restored afterwards."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def steps_per_epoch(train: LabelledImages, cfg: FitConfig) -> int:
    n = int((train.y == 0).sum()) if cfg.mode == "good-only" else len(train)
    per = cfg.batch_size // 2 if cfg.mode == "good-only" else cfg.batch_size
    return max(1, n // per)


def fit(train: LabelledImages, cfg: FitConfig, progress: bool = True, desc: str = "train",
        base: Path | None = None) -> TabletNet:
    """Train a `TabletNet` on `train` with augmentation; returns it in eval mode.

    From scratch, or with `base` (a released classifier's ONNX file) from that model's weights,
    its BatchNorms re-expressed with `train`'s statistics and a fresh head for the classes of
    `train` (pipeline.model.base); the whole network then trains as from scratch.

    The network has one logit per class of `train.classes` (plus a training-only synthetic
    class when `cfg.aux_pairs`); `ServingModel(net, num_classes=len(train.classes))` serves it.
    """
    if cfg.mode not in ("supervised", "good-only"):
        raise ValueError(f"mode must be 'supervised' or 'good-only', got {cfg.mode!r}")
    if len(train) < 2:
        raise ValueError(f"need at least 2 training images, got {len(train)}")
    good_only = cfg.mode == "good-only"
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    aux = 0 if good_only else cfg.aux_pairs
    num_classes = len(train.classes) + (1 if aux else 0)
    net = TabletNet(num_classes=num_classes, pool=cfg.pool)
    if base is not None:
        init_from_base(net, base)
        adapt_norm(net, train.x[: 256])
        torch.manual_seed(cfg.seed)
        net.head.reset_parameters()
    x_all = torch.from_numpy(train.x)
    y_all = torch.from_numpy(train.y)
    goods = torch.from_numpy(np.flatnonzero(train.y == 0))
    if (good_only or aux) and len(goods) == 0:
        raise ValueError("synthetic anomalies need good training images, there are none")
    m_all = torch.from_numpy(train.mask) if train.mask is not None and cfg.seg_weight > 0.0 else None
    pos_weight = torch.tensor(cfg.seg_pos_weight)
    n = len(goods) if good_only else len(train)
    per_step = cfg.batch_size // 2 if good_only else cfg.batch_size
    steps = steps_per_epoch(train, cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    # On a terminal the bar redraws; in CI logs, a line every 30 s instead of thousands.
    bar = tqdm(
        total=cfg.epochs * steps,
        desc=desc,
        unit="batch",
        disable=not progress,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
        file=sys.stderr,
    )
    net.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=g) if good_only else _epoch_order(n, train.paired, g)
        running = 0.0
        for step in range(steps):
            sel = order[step * per_step : (step + 1) * per_step]
            parts_x: list[torch.Tensor] = []
            parts_y: list[torch.Tensor] = []
            parts_m: list[torch.Tensor | None] = []
            pairs: list[torch.Tensor] = []  # [k, 2] positions (defective, twin) in the batch
            if good_only:
                pairs.append(_pairs_block(0, len(sel)))
                xs, ms = _synthetic_pairs(x_all[goods[sel]], g, cfg)
                parts_x.append(xs)
                parts_y.append(torch.tensor([1, 0] * len(sel)))
                parts_m.append(ms)
            else:
                xb = x_all[sel]
                mb = None if m_all is None else m_all[sel]
                paired = train.paired and len(sel) % 2 == 0
                if cfg.augment:
                    xb, mb = augment(xb, g, mb, group=2 if paired else 1, blur_max=cfg.blur_max,
                                     blur_chance=cfg.blur_chance, views=cfg.views)
                if paired:
                    whole = (sel[0::2] % 2 == 0) & (sel[1::2] == sel[0::2] + 1)
                    pairs.append(_pairs_block(0, len(sel) // 2)[whole])
                parts_x.append(xb)
                parts_y.append(y_all[sel])
                parts_m.append(mb)
                if aux:
                    pick = goods[torch.randint(0, len(goods), (aux,), generator=g)]
                    xs, ms = _synthetic_pairs(x_all[pick], g, cfg)
                    pairs.append(_pairs_block(len(sel), aux))
                    parts_x.append(xs)
                    parts_y.append(torch.tensor([num_classes - 1, 0] * aux))
                    parts_m.append(ms)
            xb = torch.cat(parts_x)
            yb = torch.cat(parts_y)
            logits, seg = net.forward_train(xb)
            loss = F.cross_entropy(logits, yb)
            if cfg.seg_weight > 0.0 and any(m is not None for m in parts_m):
                has = torch.cat([torch.full((len(px),), m is not None) for px, m in zip(parts_x, parts_m, strict=True)])
                mask = torch.cat([m if m is not None else torch.zeros(len(px), *seg.shape[1:])
                                  for px, m in zip(parts_x, parts_m, strict=True)])
                loss = loss + cfg.seg_weight * F.binary_cross_entropy_with_logits(
                    seg[has], mask[has], pos_weight=pos_weight)
            if pairs and cfg.rank_weight > 0.0:
                loss = loss + cfg.rank_weight * _pair_rank_loss(logits, torch.cat(pairs), cfg.rank_margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / (step + 1):.3f}", refresh=False)
    bar.close()
    return net.eval()


def _pairs_block(offset: int, k: int) -> torch.Tensor:
    """[k, 2] batch positions of k consecutive (defective, twin) pairs starting at offset."""
    first = offset + 2 * torch.arange(k)
    return torch.stack([first, first + 1], dim=1)


def _synthetic_pairs(good: torch.Tensor, g: torch.Generator, cfg: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(anomaly, good) pairs interleaved [2k, 3, H, W] with masks [2k, H/8, W/8] (the
    segmentation head's cells).

    The good image is augmented first so the anomaly sits on the transformed unit; both rows of
    a pair then share every nuisance.
    """
    if cfg.augment:
        good, _ = augment(good, g, blur_max=cfg.blur_max, blur_chance=cfg.blur_chance, views=cfg.views)
    anomalous, masks = synthesize_batch(good, g, SEG_STRIDE)
    x = torch.stack([anomalous, good], dim=1).flatten(0, 1)
    m = torch.stack([masks, torch.zeros_like(masks)], dim=1).flatten(0, 1)
    return x, m


def _pair_rank_loss(logits: torch.Tensor, pairs: torch.Tensor, margin: float) -> torch.Tensor:
    """Soft hinge on (defect score - twin's score) over the given (defective, twin) positions."""
    if len(pairs) == 0:
        return logits.sum() * 0.0
    score = torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]
    diff = score[pairs[:, 0]] - score[pairs[:, 1]]
    return F.softplus(margin - diff).mean()


def _epoch_order(n: int, paired: bool, g: torch.Generator) -> torch.Tensor:
    """Shuffled sample order; counterfactual pairs stay adjacent so they share a batch."""
    if not paired:
        return torch.randperm(n, generator=g)
    pairs = torch.randperm(n // 2, generator=g)
    order = (pairs[:, None] * 2 + torch.tensor([0, 1])).flatten()
    return torch.cat([order, torch.arange(2 * (n // 2), n)])


@torch.no_grad()
def predict(
    net: Classifier, x: np.ndarray, views: int = 8, batch_size: int = 64, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SCORE [N] and CLASS_PROBS [N, C] of the serving model for inputs x [N, 3, H, W]."""
    model = ServingModel(net, views, num_classes).eval()
    scores, probs = [], []
    for i in range(0, len(x), batch_size):
        s, p = model(torch.from_numpy(x[i : i + batch_size]))
        scores.append(s[:, 0].numpy())
        probs.append(p.numpy())
    return np.concatenate(scores), np.concatenate(probs)
