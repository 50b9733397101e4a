"""The tablet classifier network and its serving head.

`TabletNet` is a small from-scratch CNN (no pretrained weights exist offline): strided stem,
pooled stages, then global max + mean pooling so a defect a few pixels wide anywhere on the
unit still reaches the classifier. A 1x1 segmentation head on the 1/8-resolution features is
trained against the simulator's defect masks when they exist (dense supervision teaches a small
network where to look far faster than image labels alone); it is not part of the served graph.

`ServingModel` is what gets exported (with test-time flips/turns averaged in the graph):
SCORE = 1 - p(good), computed as
sigmoid(logsumexp(defect logits) - good logit) (the same number, but full float32 precision for
the tiny scores of good units), and CLASS_PROBS = softmax(logits).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.imaging.products import DEFECT_CLASSES

CLASSES: tuple[str, ...] = ("good", *sorted(DEFECT_CLASSES))
DEFAULT_WIDTHS: tuple[int, int, int, int, int] = (16, 24, 32, 48, 64)
SEG_STRIDE = 8  # input pixels per cell of the segmentation head


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


POOLINGS = ("mean", "mean+max")


class TabletNet(nn.Module):
    """Small CNN: image [N, 3, H, W] -> class logits [N, len(CLASSES)] (H, W multiples of 16).

    `pool`: how the last feature map becomes the head's input. `mean` (the shipped model): the
    average over the unit; `mean+max` also passes each feature's strongest cell, so a defect that
    lights up one cell of 72 (a 1 px particle in a vial) is not averaged away.
    """

    def __init__(
        self, widths: tuple[int, int, int, int, int] = DEFAULT_WIDTHS, num_classes: int = len(CLASSES),
        pool: str = "mean",
    ):
        super().__init__()
        if pool not in POOLINGS:
            raise ValueError(f"pool must be one of {', '.join(POOLINGS)}, got {pool!r}")
        self.pool = pool
        a, b, c, d, e = widths
        self.local = nn.Sequential(  # -> [N, d, S/8, S/8]
            _conv(3, a, stride=2),
            _conv(a, b),
            nn.MaxPool2d(2),
            _conv(b, c),
            _conv(c, c),
            nn.MaxPool2d(2),
            _conv(c, d),
            _conv(d, d),
        )
        self.context = nn.Sequential(nn.MaxPool2d(2), _conv(d, e), _conv(e, e))  # -> S/16
        self.seg = nn.Conv2d(d, 1, 1)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(e * (2 if pool == "mean+max" else 1), num_classes)

    def _pooled(self, f: torch.Tensor) -> torch.Tensor:
        mean = f.mean(dim=(2, 3))
        return mean if self.pool == "mean" else torch.cat([mean, f.amax(dim=(2, 3))], dim=1)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and defect-mask logits [N, H/8, W/8]."""
        local = self.local(x)
        f = self.context(local)
        return self.head(self.dropout(self._pooled(f))), self.seg(local)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.context(self.local(x))
        return self.head(self.dropout(self._pooled(f)))


class NetEnsemble(nn.Module):
    """Several trained networks as one: their logits averaged (a small ensemble, chosen by the
    model search only when validation prefers it over each member: it costs one network per
    member at inference)."""

    def __init__(self, nets: list[TabletNet]):
        super().__init__()
        if len(nets) < 2:
            raise ValueError(f"an ensemble needs at least 2 networks, got {len(nets)}")
        widths = {n.head.out_features for n in nets}
        if len(widths) != 1:
            raise ValueError(f"ensemble members disagree on their logits: {sorted(widths)}")
        self.nets = nn.ModuleList(nets)
        self.head = nets[0].head  # out_features: what ServingModel serves by default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([n(x) for n in self.nets]).mean(dim=0)


Classifier = TabletNet | NetEnsemble


def dihedral_views(x: torch.Tensor, views: int) -> list[torch.Tensor]:
    """The first `views` (1, 2, 4 or 8) of the 8 flips/quarter turns of a batch [N, C, H, W]."""
    if views not in (1, 2, 4, 8):
        raise ValueError(f"views must be 1, 2, 4 or 8, got {views}")
    t = x.transpose(2, 3)
    return [x, x.flip(3), x.flip(2), x.flip(2).flip(3), t, t.flip(3), t.flip(2), t.flip(2).flip(3)][:views]


class ServingModel(nn.Module):
    """What gets exported: INPUT -> SCORE [N, 1], CLASS_PROBS [N, C] (and, with `thresholds`
    and `version`, THRESHOLDS [N, 2] and MODEL_VERSION [N, 1] constants).

    The logits are averaged over `views` flips/quarter turns of each unit (test-time
    augmentation inside the graph): a defect looks the same turned over, the network's
    unit-to-unit noise does not, so the average separates good from defective units far
    better than one view (measured: held-out AUROC 0.98 -> 0.998 with 8 views), at `views`
    times the inference cost. Only the first `num_classes` logits are served (a network may
    carry a training-only logit for synthetic anomalies).
    """

    # Buffers, registered in __init__ only when `thresholds` is given (self.constants).
    thresholds: torch.Tensor
    version: torch.Tensor

    def __init__(
        self,
        net: Classifier,
        views: int = 8,
        num_classes: int | None = None,
        thresholds: tuple[float, float] | None = None,
        version: int | None = None,
    ):
        super().__init__()
        dihedral_views(torch.zeros(1, 1, 2, 2), views)  # validates `views`
        self.net = net
        self.views = views
        self.num_classes = int(num_classes or net.head.out_features)
        self.constants = thresholds is not None
        if thresholds is not None:  # self.constants
            if version is None:
                raise ValueError("a served graph with THRESHOLDS also needs its MODEL_VERSION")
            review, reject = (float(t) for t in thresholds)
            if not review <= reject:
                raise ValueError(f"review threshold {review} must be <= reject threshold {reject}")
            self.register_buffer("thresholds", torch.tensor([[review, reject]], dtype=torch.float32))
            self.register_buffer("version", torch.tensor([[int(version)]], dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stacked = torch.cat(dihedral_views(x, self.views), dim=0)
        logits = torch.stack(self.net(stacked).chunk(self.views, dim=0)).mean(dim=0)[:, : self.num_classes]
        probs = torch.softmax(logits, dim=1)
        score = torch.sigmoid(torch.logsumexp(logits[:, 1:], dim=1, keepdim=True) - logits[:, :1])
        if not self.constants:
            return score, probs
        # Broadcast against a zero column of the batch: exported with static widths 2 and 1.
        zero = torch.zeros_like(score)
        return score, probs, zero + self.thresholds, zero.to(torch.int64) + self.version
