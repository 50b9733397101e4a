"""The images a training run learns from and validates on: rendered units or a dataset folder.

Rendered supervised training (`make model`) learns the product's own counterfactual pairs plus
pairs of the assorted tablet family (pipeline.imaging.products.ASSORTED_TABLETS): the shipped
model then knows defects on tablets of every shape and colour, which is what makes it a base
that other products' models fine-tune from (measured in docs/models.md). Validation is always
the product's own units.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.datasets.folder import DatasetError, dataset_hash, load_dataset, review_export
from pipeline.imaging.products import ASSORTED_TABLETS, get_spec
from pipeline.model.data import (
    GOOD_ONLY_CLASSES,
    LabelledImages,
    concat_sets,
    load_images,
    render_set,
    stratified_split,
    supervised_classes,
)
from pipeline.model.preprocess import MODEL_INPUT_SIZE, Size

MIN_GOOD_ONLY_IMAGES = 8
TRAIN_SUBTLE_FRACTION = 0.5
VAL_DEFECT_RATE = 0.25
VAL_SUBTLE_FRACTION = 0.33
DATASET_VAL_FRACTION = 0.25
# Rendered supervised training: assorted-family pairs per pair of the product's own.
ASSORTED_RATIO = 2.0
# Render streams (seeded generators are [seed, stream, unit]): disjoint for every set.
TRAIN_STREAM, VAL_STREAM, ASSORTED_STREAM = 0, 1, 3


def simulated_sets(product: str, mode: str, train_count: int, seed: int, size: int = MODEL_INPUT_SIZE,
                   assorted_ratio: float = ASSORTED_RATIO) -> tuple[LabelledImages, LabelledImages, dict[str, Any]]:
    """Rendered training and validation sets of `product` at `size` x `size` and how they were
    made (model card)."""
    get_spec(product)  # ValueError naming the products the simulator knows
    val_count = max(30, train_count)
    assorted_count = 0
    if mode == "supervised":
        train = render_set(product, train_count, defect_rate=0.5, subtle_fraction=TRAIN_SUBTLE_FRACTION,
                           seed=seed, stream=TRAIN_STREAM, paired=True, size=size)
        assorted_count = 2 * int(round(assorted_ratio * train_count / 2))
        if assorted_count:
            train = concat_sets(train, render_set(
                ASSORTED_TABLETS, assorted_count, defect_rate=0.5, subtle_fraction=TRAIN_SUBTLE_FRACTION,
                seed=seed, stream=ASSORTED_STREAM, paired=True, size=size))
    else:
        train = as_good_only(render_set(product, train_count, defect_rate=0.0, subtle_fraction=0.0,
                                        seed=seed, stream=TRAIN_STREAM, size=size))
    val = render_set(product, val_count, defect_rate=VAL_DEFECT_RATE,
                     subtle_fraction=VAL_SUBTLE_FRACTION, seed=seed, stream=VAL_STREAM, size=size)
    if mode == "good-only":
        val = as_good_only(val)
    info = {
        "source": "simulator",
        "generator": "pipeline.imaging.tablets.render_tablet",
        "generator_seed": seed,
        "train": {"count": len(train), "paired": train.paired, "subtle_fraction": TRAIN_SUBTLE_FRACTION,
                  "stream": TRAIN_STREAM, "product_units": len(train) - assorted_count,
                  "assorted_units": assorted_count, "assorted_stream": ASSORTED_STREAM,
                  "sha256": train.content_hash()},
        "validation": {"count": len(val), "defect_rate": VAL_DEFECT_RATE,
                       "subtle_fraction": VAL_SUBTLE_FRACTION, "stream": VAL_STREAM, "sha256": val.content_hash()},
    }
    return train, val, info


def as_good_only(s: LabelledImages) -> LabelledImages:
    """The same images with classes good/anomaly (every defect becomes `anomaly`)."""
    return replace(s, y=(s.y != 0).astype(np.int64), classes=GOOD_ONLY_CLASSES, truth=s.defect_names)


def dataset_frame_sizes(data: Path, product: str) -> list[tuple[int, int]]:
    """(width, height) of each of the product's frames in a dataset folder, from the image headers
    (what the input geometry is chosen from); DatasetError lists every bad row."""
    ds = load_dataset(data, product)
    sizes: list[tuple[int, int]] = []
    for r in ds.rows:
        try:
            with Image.open(r.image) as img:
                sizes.append(img.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # undecodable: refused with its reason when the images are loaded
    return sizes


def dataset_sets(data: Path, product: str, mode: str, seed: int, val_fraction: float = DATASET_VAL_FRACTION,
                 size: Size = MODEL_INPUT_SIZE) -> tuple[LabelledImages, LabelledImages, dict[str, Any]]:
    """The product's rows of a dataset folder at input geometry `size`, split per class (seeded)
    into training and validation; DatasetError lists every bad row or why the rows cannot train
    `mode`."""
    ds = load_dataset(data, product)  # DatasetError lists every bad row
    defects = [r.defect for r in ds.rows]
    n_good = sum(1 for d in defects if d == "none")
    labels = ds.root / "labels.csv"
    if mode == "supervised":
        classes = supervised_classes(defects)
        if n_good == 0 or len(classes) < 2:
            present = sorted({d if d != "none" else "good" for d in defects})
            raise DatasetError(ds.root, [(
                str(labels),
                f"supervised training needs good and defective units of product {product!r}; its "
                f"{len(ds)} rows are all {', '.join(present)} (use --mode good-only for good images only)",
            )])
    else:
        classes = GOOD_ONLY_CLASSES
        if n_good < MIN_GOOD_ONLY_IMAGES:
            raise DatasetError(ds.root, [(str(labels), f"good-only training needs at least {MIN_GOOD_ONLY_IMAGES} "
                                          f"good images of product {product!r}, found {n_good}")])
    images = [(ds.relative(r), r.image.read_bytes(), r.defect) for r in ds.rows]
    load_classes = supervised_classes(defects) if mode == "good-only" else classes
    everything = load_images(images, size, source=f"dataset {ds.root}", classes=load_classes)
    if mode == "supervised":
        train_idx, val_idx = stratified_split(everything.y, val_fraction, seed)
        train, val = everything.subset(train_idx), everything.subset(val_idx)
    else:
        good = np.flatnonzero(everything.y == 0)
        tr, va = stratified_split(everything.y[good], val_fraction, seed)
        defect_rows = np.flatnonzero(everything.y != 0)
        train = as_good_only(everything.subset(good[tr]))
        val = as_good_only(everything.subset(np.sort(np.concatenate([good[va], defect_rows]))))
    info = {
        "source": "dataset",
        "path": str(ds.root),
        "dataset_sha256": dataset_hash(ds),
        "product_rows": len(ds),
        "split_seed": seed,
        "validation_fraction": val_fraction,
        "split": "per class, seeded" + ("; defective rows only validate (good-only)" if mode == "good-only" else ""),
        "train": {"count": len(train)},
        "validation": {"count": len(val)},
    }
    reviewed = review_export(ds.root)
    if reviewed is not None:  # rows from people's review decisions: the card names them (docs/review.md)
        info["review_decisions"] = {k: reviewed.get(k) for k in ("exported_utc", "since_utc", "units", "decisions")}
    return train, val, info


def count_defects(s: LabelledImages) -> dict[str, int]:
    """Units per true class ('good' for good units), for the model card."""
    names, counts = np.unique(s.defect_names.astype(str), return_counts=True)
    return {("good" if n == "none" else n): int(c) for n, c in zip(names, counts, strict=True)}


