"""Simulated dataset folders: rendered units of any catalogued product, with their labels."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.datasets.folder import LABELS_FILE, NO_DEFECT, Row, write_dataset
from pipeline.imaging.catalog import product_kind, sample_product
from pipeline.imaging.tablets import sample_unit
from pipeline.wire.codec import encode_png


def generate_dataset(
    out: Path,
    count: int,
    products: Sequence[str],
    defect_rate: float,
    seed: int,
    size: int = 160,
    *,
    subtle_fraction: float = 0.33,
    progress: bool = False,
) -> Path:
    """Render `count` simulated units into a new dataset folder; returns the folder.

    Products take turns; each image i is drawn from generator [seed, i], so the same arguments
    always give the same files (label products: on the same day, their expiry dates count from
    today). Images go to `<product>/<good|defect class>/<i>.png`; tablets are `size` px, the other
    kinds keep their camera's frame size.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not products:
        raise ValueError("no products given")
    kinds = {p: product_kind(p) for p in products}  # ValueError naming the valid products
    today = datetime.now(UTC).date()
    out = Path(out).resolve()
    if (out / LABELS_FILE).exists():
        raise FileExistsError(f"{out / LABELS_FILE} exists: choose an empty folder for a new dataset")
    rows: list[Row] = []
    for i in tqdm(range(count), desc="render", unit="img", disable=not progress):
        product = products[i % len(products)]
        rng = np.random.default_rng([seed, i])
        if kinds[product] == "tablet":
            img, defect = sample_unit(rng, product, defect_rate, subtle_fraction, size=size)
        else:  # vials, blister packs (one image per pack), labels (expiry relative to today)
            made = sample_product(rng, product, defect_rate, lot=f"SIM{seed}", seq=i, today=today)
            img, defect = made.image, made.defect
        path = out / product / (defect or "good") / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(img))
        rows.append(Row(path, product, "defect" if defect else "good", defect or NO_DEFECT))
    write_dataset(out, rows)
    return out
