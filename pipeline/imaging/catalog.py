"""Every product the simulated line can make, whatever its kind (tablet, vial, blister, label).

The gateway and the benchmarks ask here for the next unit of a product; each kind's renderer
lives in its own module and is imported only when a line makes that kind.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import date

import numpy as np
from PIL import Image

from pipeline.imaging.products import PRODUCTS
from pipeline.imaging.tablets import sample_unit

# kind -> (module, products registry, sampler)
_KINDS: dict[str, tuple[str, str, str]] = {
    "vial": ("pipeline.imaging.vials", "VIAL_PRODUCTS", "sample_vial"),
    "blister": ("pipeline.imaging.blisters", "BLISTER_PRODUCTS", "sample_blister"),
    "label": ("pipeline.imaging.labels", "LABEL_PRODUCTS", "sample_label"),
}


def _registry(kind: str) -> dict:
    module, products, _ = _KINDS[kind]
    return getattr(importlib.import_module(module), products)


def product_kind(product: str) -> str:
    """`tablet`, `vial`, `blister` or `label`; ValueError naming every product that exists."""
    if product in PRODUCTS:
        return "tablet"
    for kind in _KINDS:
        if product in _registry(kind):
            return kind
    raise ValueError(f"unknown product {product!r}; valid products: {', '.join(all_products())}")


def all_products() -> list[str]:
    return sorted([*PRODUCTS, *(p for kind in _KINDS for p in _registry(kind))])


# Conditions the simulator renders that are flagged for a person, not rejected at the gate
# (docs/recipes.md): their units are good for the gate, and their ground truth says why.
FLAGGED = ("duplicate-serial",)


@dataclass(frozen=True)
class SampledUnit:
    image: Image.Image
    defect: str | None  # what the gate must remove it for (None = good)
    flag: str = ""  # a FLAGGED condition the unit carries, if any


def sample_product(
    rng: np.random.Generator, product: str, defect_rate: float, lot: str, seq: int, today: date
) -> SampledUnit:
    """The next unit of `product` as the line makes it.

    Labels need the batch (lot, unit number for the serial, today's date for the expiry); the
    other kinds ignore them.
    """
    kind = product_kind(product)
    if kind == "tablet":
        return SampledUnit(*sample_unit(rng, product, defect_rate))
    module, _, sampler = _KINDS[kind]
    fn = getattr(importlib.import_module(module), sampler)
    if kind == "label":
        image, defect, _truth = fn(rng, product, defect_rate, lot=lot, seq=seq, today=today)
    else:
        image, defect, _truth = fn(rng, product, defect_rate)
    if defect in FLAGGED:
        return SampledUnit(image, None, defect)
    return SampledUnit(image, defect)
