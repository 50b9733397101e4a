"""Base models: a released classifier whose network starts the training of another (transfer).

No pretrained weights can be downloaded on a line PC, but the project trains its own: `make
model` renders counterfactual pairs with defect masks of the round tablet and of the assorted
tablet family (every unit a new shape, size and colour, never one of the catalogued products)
and learns them (docs/models.md). A dataset of a few hundred images is far too small to learn
good features from scratch (held-out detection 79-92 % vs 99 % needed), so `linesight train
--data` starts from that base network's weights and fine-tunes them (new head for the dataset's
classes). A base trained on the round tablet alone did not transfer to the oval one; the
assorted family is what makes it transfer.

The weights are read back from the base version's released ONNX file: the exporter folds each
BatchNorm into its convolution, so every `_conv` block comes back as a convolution with the folded
kernel and a BatchNorm that is an exact per-channel bias (mean 0, variance 1 - eps, scale 1).
Before fine-tuning, `adapt_norm` re-expresses those BatchNorms with the new images' statistics
without changing what the network computes (frozen base statistics trained far worse: oval
validation AUROC 0.63 vs 0.81 in a short fine-tune). No extra artifact is needed next to the ONNX, and
the base is identified by the sha256 of the very file that serves (recorded in the model card).
The training-only segmentation head is not in the served graph; it starts fresh.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from pipeline.core.hashing import sha256_file
from pipeline.model import repository as layout
from pipeline.model.net import DEFAULT_WIDTHS, TabletNet
from pipeline.settings import PROJECT_ROOT

# The default base: the project's round-tablet classifier, trained by `make model`.
DEFAULT_BASE_MODEL = "tablet_classifier"
DEFAULT_BASE_REPO = PROJECT_ROOT / "triton_models"
NO_BASE = "none"


class BaseModelError(ValueError):
    """The base model cannot be found or does not fit TabletNet."""


@dataclass(frozen=True)
class BaseModel:
    """A released classifier version used to initialise training."""

    onnx_path: Path
    sha256: str
    card: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.card.get("model") or self.onnx_path.parent.parent.name)

    @property
    def version(self) -> int | None:
        v = self.card.get("version")
        if v is None and self.onnx_path.parent.name.isdigit():
            v = int(self.onnx_path.parent.name)
        return None if v is None else int(v)

    def describe(self) -> dict[str, Any]:
        """What the model card records about the base."""
        return {
            "model": self.name,
            "version": self.version,
            "product": self.card.get("product"),
            "mode": self.card.get("mode"),
            "classes": self.card.get("classes"),
            "trained_on": _trained_on(self.card),
            "onnx": str(self.onnx_path),
            "sha256": self.sha256,
        }


def _trained_on(card: dict[str, Any]) -> str | None:
    d = card.get("dataset") or {}
    if d.get("source") == "simulator":
        train = d.get("train", {})
        own = train.get("product_units", train.get("count"))
        assorted = f" and {train['assorted_units']} of the assorted tablet family" if train.get("assorted_units") else ""
        return f"simulator: {own} rendered images of {card.get('product')}{assorted}"
    if d.get("source") == "dataset":
        return f"dataset {d.get('path')} (sha256 {d.get('dataset_sha256')})"
    return None


def _latest_version_dir(model_dir: Path) -> Path | None:
    versions = sorted((int(p.name), p) for p in model_dir.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / layout.ONNX_FILE).is_file()) if model_dir.is_dir() else []
    return versions[-1][1] if versions else None


def default_base_path() -> Path | None:
    """The shipped base (latest released version of the project's `tablet_classifier`, trained on
    round tablets and the assorted tablet family), or None when `make model` has not produced it."""
    v = _latest_version_dir(DEFAULT_BASE_REPO / DEFAULT_BASE_MODEL)
    return None if v is None else v / layout.ONNX_FILE


def resolve_base(spec: str | Path | None) -> Path | None:
    """The ONNX file a `--base` value names.

    None or "auto": the default base if it exists (else no base); "none": no base; a path: an
    ONNX file, a version directory holding one, or a model directory (its latest version).
    """
    if spec is None or str(spec) == "auto":
        return default_base_path()
    if str(spec).lower() == NO_BASE:
        return None
    p = Path(spec)
    if p.is_file():
        return p
    if (p / layout.ONNX_FILE).is_file():
        return p / layout.ONNX_FILE
    v = _latest_version_dir(p) if p.is_dir() else None
    if v is not None:
        return v / layout.ONNX_FILE
    raise BaseModelError(f"base model {spec}: no such ONNX file, version directory or model directory "
                         f"(use --base none to train from scratch)")


def load_base(path: Path) -> BaseModel:
    path = Path(path)
    card_path = path.parent / layout.CARD_JSON
    card: dict[str, Any] = {}
    if card_path.is_file():
        card = json.loads(card_path.read_text(encoding="utf-8"))
    return BaseModel(path, sha256_file(path), card)


def _conv_blocks(net: TabletNet) -> list[nn.Sequential]:
    return [m for m in [*net.local, *net.context] if isinstance(m, nn.Sequential)]


def base_weights(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """(folded kernel, bias) of every convolution of the served graph in order, and the head's
    (weight, bias)."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs, head = [], None
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = inits.get(node.input[1])
            b = inits.get(node.input[2]) if len(node.input) > 2 else None
            if w is None:
                raise BaseModelError(f"{path}: convolution {node.name} has no constant kernel")
            convs.append((w, np.zeros(w.shape[0], np.float32) if b is None else b))
        elif node.op_type == "Gemm" and head is None:
            w, b = inits.get(node.input[1]), inits.get(node.input[2])
            if w is None or b is None:
                raise BaseModelError(f"{path}: the head {node.name} has no constant weights")
            head = (w, b)
    if head is None:
        raise BaseModelError(f"{path}: no classifier head (Gemm) in the graph")
    return convs, head


def init_from_base(net: TabletNet, path: Path) -> None:
    """Copy a base model's network weights into `net` (same widths; the head only where its class
    count matches). Raises BaseModelError when the base is not a TabletNet of these widths."""
    convs, (hw, hb) = base_weights(path)
    blocks = _conv_blocks(net)
    if len(convs) != len(blocks):
        raise BaseModelError(f"{path}: {len(convs)} convolutions, TabletNet has {len(blocks)} "
                             f"(widths {list(DEFAULT_WIDTHS)})")
    with torch.no_grad():
        for (w, b), block in zip(convs, blocks, strict=True):
            conv, bn = block[0], block[1]
            # Every block is net._conv's Conv2d, BatchNorm2d (tracking running statistics), ReLU.
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            assert bn.running_mean is not None and bn.running_var is not None
            if tuple(w.shape) != tuple(conv.weight.shape):
                raise BaseModelError(f"{path}: kernel {tuple(w.shape)} where TabletNet has {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(np.array(w)))
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(np.array(b)))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        if tuple(hw.shape) == tuple(net.head.weight.shape):
            net.head.weight.copy_(torch.from_numpy(np.array(hw)))
            net.head.bias.copy_(torch.from_numpy(np.array(hb)))


@torch.no_grad()
def adapt_norm(net: TabletNet, x: np.ndarray, batch_size: int = 64) -> None:
    """Re-express every BatchNorm of a base-initialised `net` with statistics of the new data x,
    without changing what the network computes: running mean/variance := the new images' batch
    statistics of the convolution output, scale := their standard deviation, shift := mean + the
    base's bias. Training can then keep the BatchNorms in training mode (normalising batches as
    they come) instead of freezing them at the base's product's statistics."""
    blocks = _conv_blocks(net)
    sums: list[list[torch.Tensor]] = [[] for _ in blocks]
    hooks = [block[0].register_forward_hook(lambda _m, _i, out, k=k: sums[k].append(
        torch.stack([out.sum((0, 2, 3)), (out * out).sum((0, 2, 3)),
                     torch.full((out.shape[1],), float(out.numel() // out.shape[1]))])))
             for k, block in enumerate(blocks)]
    was_training = net.training
    net.eval()
    try:
        for i in range(0, len(x), batch_size):
            net(torch.from_numpy(x[i : i + batch_size]))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    for block, parts in zip(blocks, sums, strict=True):
        s, ss, n = torch.stack(parts).sum(0)
        mean = s / n
        var = (ss / n - mean * mean).clamp(min=0.0)
        bn = block[1]
        # Every block is net._conv's Conv2d, BatchNorm2d (tracking running statistics), ReLU.
        assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
        bn.bias.copy_(mean + bn.bias)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
