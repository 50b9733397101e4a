"""Supervised training loop and batched inference of the tablet classifier (torch, CPU).

Deterministic for a given seed and thread count: seeded init, a seeded generator for shuffling
and augmentation, deterministic torch algorithms, single-process data feeding.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.model.augment import augment
from pipeline.model.data import CLASSES, LabelledImages
from pipeline.model.net import ServingModel, TabletNet

TRAIN_THREADS = 2


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings recorded in the model card."""

    epochs: int = 14
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    # Dense supervision from defect masks (rendered sets only): weight and positive-cell weight.
    seg_weight: float = 1.0
    seg_pos_weight: float = 10.0
    # Counterfactual pairs (rendered sets only): the defective unit must out-score its own
    # defect-free twin by `rank_margin` logits. Both share every nuisance, so this gradient is
    # all about the defect; it is what lets a small net learn chips and specks in minutes.
    rank_weight: float = 1.0
    rank_margin: float = 2.0
    augment: bool = True


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


def fit(train: LabelledImages, cfg: FitConfig, progress: bool = True) -> TabletNet:
    """Train a fresh `TabletNet` on `train` with augmentation; returns it in eval mode."""
    if len(train) < 2:
        raise ValueError(f"need at least 2 training images, got {len(train)}")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    net = TabletNet(num_classes=len(CLASSES))
    x_all = torch.from_numpy(train.x)
    y_all = torch.from_numpy(train.y)
    use_masks = train.mask is not None and cfg.seg_weight > 0.0
    m_all = torch.from_numpy(train.mask) if use_masks else None
    pos_weight = torch.tensor(cfg.seg_pos_weight)
    n = len(train)
    steps_per_epoch = max(1, n // cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    # On a terminal the bar redraws; in CI logs, a line every 30 s instead of thousands.
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        desc="train",
        unit="batch",
        disable=not progress,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    net.train()
    for epoch in range(cfg.epochs):
        order = _epoch_order(n, train.paired, g)
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            xb, mb = x_all[idx], None if m_all is None else m_all[idx]
            if cfg.augment:
                group = 2 if train.paired and len(idx) % 2 == 0 else 1
                xb, mb = augment(xb, g, mb, group=group)
            logits, seg = net.forward_train(xb)
            loss = F.cross_entropy(logits, y_all[idx])
            if mb is not None:
                loss = loss + cfg.seg_weight * F.binary_cross_entropy_with_logits(seg, mb, pos_weight=pos_weight)
            if train.paired and cfg.rank_weight > 0.0:
                loss = loss + cfg.rank_weight * _pair_rank_loss(logits, idx, cfg.rank_margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / (step + 1):.3f}", refresh=False)
    bar.close()
    return net.eval()


def _pair_rank_loss(logits: torch.Tensor, idx: torch.Tensor, margin: float) -> torch.Tensor:
    """Soft hinge on (defect score - twin's score) for the complete pairs in the batch."""
    score = torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]
    first, second = idx[0::2], idx[1::2]
    n = min(len(first), len(second))
    whole = (first[:n] % 2 == 0) & (second[:n] == first[:n] + 1)
    if not bool(whole.any()):
        return logits.sum() * 0.0
    diff = score[0::2][:n][whole] - score[1::2][:n][whole]
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
    net: TabletNet, x: np.ndarray, views: int = 8, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """SCORE [N] and CLASS_PROBS [N, C] of the serving model for inputs x [N, 3, S, S]."""
    model = ServingModel(net, views).eval()
    scores, probs = [], []
    for i in range(0, len(x), batch_size):
        s, p = model(torch.from_numpy(x[i : i + batch_size]))
        scores.append(s[:, 0].numpy())
        probs.append(p.numpy())
    return np.concatenate(scores), np.concatenate(probs)
