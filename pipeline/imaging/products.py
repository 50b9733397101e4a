"""Products the simulated line makes and the defect classes it can show.

A `TabletSpec` holds the physical facts of one SKU (shape, size, colour, score line); the
renderer turns them into pixels. Product ids are the SKU strings used everywhere else
(frame headers, dataset `product` column, settings).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Literal

import numpy as np

DEFECT_CLASSES: tuple[str, ...] = ("crack", "chip", "discoloration", "contamination")

Shape = Literal["round", "oval"]


@dataclass(frozen=True)
class TabletSpec:
    """Physical description of one tablet SKU as the top camera sees it."""

    product: str
    shape: Shape
    length_mm: float  # diameter for round tablets, long axis for oval ones
    width_mm: float  # equals length_mm for round tablets
    color: tuple[float, float, float]  # albedo, linear 0..1 RGB
    color_jitter: float  # per-unit albedo spread (lot-to-lot, moisture)
    scored: bool  # has a break (score) line across the face
    # Tint a discoloured blotch takes on this product (multiplied into the albedo).
    stain: tuple[float, float, float]


PRODUCTS: dict[str, TabletSpec] = {
    spec.product: spec
    for spec in (
        TabletSpec(
            product="tablet-round-white-10mm",
            shape="round",
            length_mm=10.0,
            width_mm=10.0,
            color=(0.90, 0.90, 0.88),
            color_jitter=0.025,
            scored=True,
            stain=(0.86, 0.72, 0.50),
        ),
        TabletSpec(
            product="tablet-oval-yellow-14mm",
            shape="oval",
            length_mm=14.0,
            width_mm=7.0,
            color=(0.93, 0.78, 0.30),
            color_jitter=0.03,
            scored=False,
            stain=(0.78, 0.55, 0.40),
        ),
    )
}


# Not a product: a family of tablets with a new shape, size and colour drawn for every unit.
# Rendered training adds it so the shipped model learns what a chip, crack, stain or speck looks
# like on any tablet, not only on its own product: that model is the base other products'
# models are fine-tuned from (pipeline/model/base.py, docs/models.md).
ASSORTED_TABLETS = "assorted-tablets"
# The family keeps clear of every catalogued product: no unit has a catalogued product's shape
# with an albedo within this (RGB, 0..1) distance of its colour. So every catalogued product is
# one the family never showed, and measuring a product's fine-tuned model measures transfer.
ASSORTED_COLOR_CLEARANCE = 0.35


def draw_assorted_spec(rng: np.random.Generator) -> TabletSpec:
    """One unit's spec of the assorted family: round or oval, 7-14.5 mm, any hue, white to
    saturated, matt to bright, scored or not; never close to a catalogued product."""
    while True:
        shape: Shape = "round" if rng.random() < 0.5 else "oval"
        length = float(rng.uniform(7.0, 14.5))
        width = length if shape == "round" else length * float(rng.uniform(0.42, 0.68))
        saturation = rng.uniform(0.0, 0.75) if rng.random() < 0.7 else rng.uniform(0.0, 0.1)
        color = colorsys.hsv_to_rgb(float(rng.random()), float(saturation), float(rng.uniform(0.45, 0.95)))
        jitter, scored = float(rng.uniform(0.015, 0.035)), bool(rng.random() < 0.35)
        if not any(
            spec.shape == shape and float(np.linalg.norm(np.subtract(color, spec.color))) < ASSORTED_COLOR_CLEARANCE
            for spec in PRODUCTS.values()
        ):
            break
    stain = np.clip(np.multiply(color, (0.9, 0.75, 0.55)) + 0.05, 0.0, 1.0)
    return TabletSpec(
        product=ASSORTED_TABLETS,
        shape=shape,
        length_mm=length,
        width_mm=width,
        color=(color[0], color[1], color[2]),
        color_jitter=jitter,
        scored=scored,
        stain=(float(stain[0]), float(stain[1]), float(stain[2])),
    )


def get_spec(product: str) -> TabletSpec:
    """The spec of `product`, or ValueError naming the products that exist."""
    try:
        return PRODUCTS[product]
    except KeyError:
        raise ValueError(
            f"unknown product {product!r}; valid products: {', '.join(sorted(PRODUCTS))}"
        ) from None


def check_defect(defect: str | None) -> None:
    """Raise ValueError unless `defect` is None (good unit) or a known defect class."""
    if defect is not None and defect not in DEFECT_CLASSES:
        raise ValueError(
            f"unknown defect {defect!r}; valid defects: {', '.join(DEFECT_CLASSES)} (or None for a good unit)"
        )
