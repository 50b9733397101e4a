"""Products the simulated line makes and the defect classes it can show.

A `TabletSpec` holds the physical facts of one SKU (shape, size, colour, score line); the
renderer turns them into pixels. Product ids are the SKU strings used everywhere else
(frame headers, dataset `product` column, settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
