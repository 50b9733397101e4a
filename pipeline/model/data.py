"""Labelled model inputs for training and evaluation, rendered or loaded from a dataset.

Every image goes through `pipeline.model.preprocess` (the serving preprocessing): rendered
frames via `prepare_pil`, dataset files via `prepare_image` on their bytes. Rendering is
seeded per image (`[seed, stream, index]`): any unit of a set can be re-rendered on its own, and
sets drawn from different streams or seeds never share a unit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.imaging.products import DEFECT_CLASSES
from pipeline.imaging.tablets import draw_unit, render_tablet_with_mask
from pipeline.model.preprocess import MODEL_INPUT_SIZE, Size, hw, prepare_image, prepare_pil
from pipeline.wire.codec import encode_png

# Class order of every supervised model: `good` first, then defect names sorted (docs/models.md).
CLASSES: tuple[str, ...] = ("good", *sorted(DEFECT_CLASSES))
GOOD_ONLY_CLASSES: tuple[str, ...] = ("good", "anomaly")


def supervised_classes(defects: Sequence[str]) -> tuple[str, ...]:
    """Class names of a supervised model from the defect names of its data."""
    return ("good", *sorted({d for d in defects if d not in ("none", "good")}))
# Defect masks are kept at the resolution of the network's segmentation head.
MASK_STRIDE = 8


@dataclass(frozen=True)
class LabelledImages:
    """Model inputs with their truth: x float32 [N, 3, S, S], y class index into `classes`."""

    x: np.ndarray
    y: np.ndarray
    subtle: np.ndarray  # bool; always False for loaded datasets (not recorded there)
    source: str  # how the set was made, for the model card
    # Where the defect is, at 1/MASK_STRIDE of the input size (float32 0/1), for rendered
    # sets only: the simulator knows it, labelled folders do not.
    mask: np.ndarray | None = None
    # Rows 2k and 2k+1 are the same unit with and without a defect (see `render_set`).
    paired: bool = False
    classes: tuple[str, ...] = CLASSES
    # sha256 of each image's encoded bytes (the file for datasets, the PNG for rendered units).
    image_sha256: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    # True defect name of each unit ('none' when good) where the classes do not say it
    # (good-only sets, whose classes are good/anomaly).
    truth: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def is_defect(self) -> np.ndarray:
        return self.y != 0

    @property
    def defect_names(self) -> np.ndarray:
        if self.truth is not None:
            return self.truth
        return np.asarray([self.classes[i] if i else "none" for i in self.y], dtype=object)

    def subset(self, index: np.ndarray) -> LabelledImages:
        index = np.asarray(index, dtype=np.int64)
        mask = None if self.mask is None else self.mask[index]
        pick = [int(i) for i in index]
        return LabelledImages(
            self.x[index], self.y[index], self.subtle[index], self.source, mask, False, self.classes,
            tuple(self.image_sha256[i] for i in pick) if self.image_sha256 else (),
            tuple(self.names[i] for i in pick) if self.names else (),
            None if self.truth is None else self.truth[index],
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.y, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}

    def content_hash(self) -> str:
        """sha256 over the exact model inputs and labels (identifies a rendered set)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.x).tobytes())
        h.update(np.ascontiguousarray(self.y.astype(np.int64)).tobytes())
        return h.hexdigest()


def render_set(
    product: str,
    count: int,
    *,
    defect_rate: float,
    subtle_fraction: float,
    seed: int,
    stream: int,
    size: int = MODEL_INPUT_SIZE,
    paired: bool = False,
) -> LabelledImages:
    """Render `count` units with the simulator and preprocess them for the model.

    With `paired`, units come in counterfactual pairs: each defective unit is followed by the
    very same unit and frame without the defect (so defect_rate is ignored: half are defective).
    The pair's only difference is the defect, which is what training needs to learn from.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    source = (
        f"simulator product={product} count={count} defect_rate={defect_rate} "
        f"subtle_fraction={subtle_fraction} seed={seed} stream={stream} paired={paired}"
    )
    if size % MASK_STRIDE:
        raise ValueError(f"input size {size} must be a multiple of {MASK_STRIDE}")
    x = np.empty((count, 3, size, size), dtype=np.float32)
    y = np.empty(count, dtype=np.int64)
    subtle = np.empty(count, dtype=bool)
    masks = np.empty((count, size // MASK_STRIDE, size // MASK_STRIDE), dtype=np.float32)
    hashes: list[str] = []
    for i in range(count):
        if paired:
            pick = np.random.default_rng([seed, stream, i // 2, 1])
            defect, is_subtle = draw_unit(pick, 1.0, subtle_fraction)
            if i % 2:
                defect, is_subtle = None, False
            rng = np.random.default_rng([seed, stream, i // 2])
        else:
            rng = np.random.default_rng([seed, stream, i])
            defect, is_subtle = draw_unit(rng, defect_rate, subtle_fraction)
        img, mask = render_tablet_with_mask(rng, product, defect, subtle=is_subtle)
        x[i] = prepare_pil(img, size)
        hashes.append(hashlib.sha256(encode_png(img)).hexdigest())
        masks[i] = _coarse_mask(mask, size)
        y[i] = 0 if defect is None else CLASSES.index(defect)
        subtle[i] = is_subtle
    return LabelledImages(x, y, subtle, source, masks, paired, CLASSES, tuple(hashes))


def concat_sets(first: LabelledImages, second: LabelledImages) -> LabelledImages:
    """`first` then `second` as one set (same classes; masks kept only if both have them).

    Two paired sets stay paired when `first` has an even count: pairs remain at rows 2k, 2k+1.
    """
    if first.classes != second.classes:
        raise ValueError(f"cannot join sets of classes {first.classes} and {second.classes}")
    paired = first.paired and second.paired and len(first) % 2 == 0
    mask = None if first.mask is None or second.mask is None else np.concatenate([first.mask, second.mask])
    truth = (None if first.truth is None and second.truth is None
             else np.concatenate([first.defect_names, second.defect_names]))
    return LabelledImages(
        np.concatenate([first.x, second.x]), np.concatenate([first.y, second.y]),
        np.concatenate([first.subtle, second.subtle]), f"{first.source} + {second.source}", mask, paired,
        first.classes, first.image_sha256 + second.image_sha256 if first.image_sha256 and second.image_sha256 else (),
        first.names + second.names if first.names and second.names else (), truth,
    )


def _coarse_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Pixel defect mask -> 0/1 cells of MASK_STRIDE x MASK_STRIDE input pixels (any hit counts)."""
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR))
    m = size // MASK_STRIDE
    cells = mask.reshape(m, MASK_STRIDE, m, MASK_STRIDE).max(axis=(1, 3))
    return (cells > 0.2).astype(np.float32)


def load_images(
    images: Sequence[tuple[str, bytes, str]],
    size: Size = MODEL_INPUT_SIZE,
    source: str = "",
    classes: Sequence[str] = CLASSES,
) -> LabelledImages:
    """Preprocess (name, encoded bytes, defect-or-'none') triples exactly as serving does, at the
    input geometry `size` (S or (height, width)).

    Raises ValueError listing every image that cannot be decoded or whose defect class the
    model does not know.
    """
    x = np.empty((len(images), 3, *hw(size)), dtype=np.float32)
    y = np.empty(len(images), dtype=np.int64)
    classes = tuple(classes)
    problems: list[str] = []
    hashes: list[str] = []
    for i, (name, data, defect) in enumerate(images):
        hashes.append(hashlib.sha256(data).hexdigest())
        cls = "good" if defect == "none" else defect
        if cls not in classes:
            problems.append(f"{name}: defect class {defect!r} is not one the model learns ({', '.join(classes[1:])})")
            continue
        try:
            x[i] = prepare_image(data, size)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        y[i] = classes.index(cls)
    if problems:
        raise ValueError(f"{len(problems)} unusable image(s):\n  " + "\n  ".join(problems))
    return LabelledImages(x, y, np.zeros(len(images), dtype=bool), source, None, False, classes,
                          tuple(hashes), tuple(name for name, _, _ in images))


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split into (train, validation) indices."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng([seed, 0x5E7])
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
