"""How a product's unit faces the camera: its declared invariance and the model's input geometry.

A model must not assume a tablet. Which flips and turns leave a unit's image a plausible image
of the same unit is a fact about the product and its line (a tablet tumbles onto the belt in any
orientation; a vial stands upright, so its fill level, meniscus and settled particles are not
turned over; a label reads one way), so a person declares it (a recipe's `[model]` table, or
`linesight train --invariance`), and it decides three things together: the flips/turns training
augments with, the nuisance variants the thresholds are calibrated on, and the views the served
graph averages (the first `views` of `pipeline.model.net.dihedral_views`). Nothing declared: no
flip or turn at all.

The input geometry keeps the frames' aspect (a 96 x 192 vial frame is not squeezed into a
square) and their full resolution up to a pixel budget, never so small that the smallest
declared defect falls under `MIN_DEFECT_INPUT_PX` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Sides of the input are multiples of this (the network pools four times by 2).
INPUT_MULTIPLE = 16
# Pixel budget of the input: the shipped tablet model's 160 x 160 (its cost per view). No import
# of pipeline.model.preprocess here: the CLI reads INVARIANCES without numpy.
DEFAULT_MAX_PIXELS = 160 * 160
# The smallest declared defect keeps at least this many input pixels across.
MIN_DEFECT_INPUT_PX = 1.5
# Frames of one product differ in aspect by at most this fraction.
ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Invariance:
    """A group of flips/turns under which the product's images stay plausible images of it."""

    name: str
    views: int  # the first `views` of dihedral_views: identity, mirror left-right, upside down, half turn, ...
    transforms: str
    example: str
    square_only: bool = False  # quarter turns swap height and width


INVARIANCES: dict[str, Invariance] = {
    i.name: i
    for i in (
        Invariance("fixed", 1, "none", "labels and cartons: text and layout read one way"),
        Invariance("upright", 2, "mirror left-right", "vials, bottles, syringes standing: gravity sets fill, "
                   "meniscus and settled particles"),
        Invariance("lying", 4, "mirror left-right, mirror top-bottom, half turn",
                   "capsules or syringes lying along the belt, either end first, either side up"),
        Invariance("any-orientation", 8, "every flip and quarter turn",
                   "round tablets tumbling onto the belt", square_only=True),
    )
}
UNDECLARED = "fixed"  # nothing declared: nothing assumed


def named_invariance(name: str) -> Invariance:
    """The invariance named `name`; ValueError listing the known names."""
    try:
        return INVARIANCES[name]
    except KeyError:
        raise ValueError(f"unknown invariance {name!r}; known: {', '.join(INVARIANCES)}") from None


def views_name(views: int) -> str:
    """The invariance whose views a served graph averages (for versions that recorded only a count)."""
    for inv in INVARIANCES.values():
        if inv.views == views:
            return inv.name
    raise ValueError(f"no invariance has {views} views")


@dataclass(frozen=True)
class InputGeometry:
    """The classifier's input [3, height, width] and how it was chosen (model card)."""

    height: int
    width: int
    frame: tuple[int, int]  # (height, width) of the product's frames
    reason: str

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def scale(self) -> float:
        return self.height / self.frame[0]

    def check(self, inv: Invariance) -> None:
        """ValueError when `inv` needs a square input and this one is not."""
        if inv.square_only and self.height != self.width:
            raise ValueError(f"invariance {inv.name!r} turns units by quarter turns, which needs a square input; "
                             f"this product's input is {self.height} x {self.width} (declare 'lying' or 'upright')")

    def as_dict(self) -> dict[str, object]:
        return {"height": self.height, "width": self.width, "frame_height": self.frame[0],
                "frame_width": self.frame[1], "scale": round(self.scale, 4), "reason": self.reason}


def _round(v: float, up: bool) -> int:
    """To a multiple of INPUT_MULTIPLE: up where resolution is what matters, else the nearest."""
    steps = math.ceil(v / INPUT_MULTIPLE - 1e-9) if up else round(v / INPUT_MULTIPLE)
    return max(INPUT_MULTIPLE, INPUT_MULTIPLE * steps)


def choose_geometry(frame_sizes: Iterable[tuple[int, int]], smallest_defect_px: float | None = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> InputGeometry:
    """The input geometry for frames of the given (width, height) sizes.

    Full resolution when the frame fits `max_pixels`, else scaled down to it, but never below the
    scale at which the smallest declared defect (in frame pixels) keeps MIN_DEFECT_INPUT_PX
    pixels (never above full resolution either); sides rounded to multiples of INPUT_MULTIPLE.
    ValueError when the frames do not share one aspect (one product, one camera view).
    """
    sizes = sorted({(int(w), int(h)) for w, h in frame_sizes})
    if not sizes:
        raise ValueError("no frames to choose an input geometry from")
    aspects = [w / h for w, h in sizes]
    if max(aspects) > min(aspects) * (1 + ASPECT_TOLERANCE):
        raise ValueError(f"the product's frames have different shapes ({', '.join(f'{w}x{h}' for w, h in sizes[:6])}): "
                         "one product is one camera view; split them into products")
    w, h = sizes[len(sizes) // 2]
    budget = min(1.0, math.sqrt(max_pixels / (w * h)))
    scale, why = budget, ("full resolution" if budget >= 1.0 else f"scaled to the {max_pixels}-pixel budget")
    up = budget >= 1.0
    if smallest_defect_px is not None:
        if smallest_defect_px <= 0:
            raise ValueError(f"smallest defect must be > 0 px, got {smallest_defect_px}")
        need = min(1.0, MIN_DEFECT_INPUT_PX / smallest_defect_px)
        if need > scale:
            up = True
            scale, why = need, (f"scaled to keep the smallest declared defect ({smallest_defect_px:g} px) at "
                                f">= {MIN_DEFECT_INPUT_PX:g} px" if need < 1.0 else
                                f"full resolution: the smallest declared defect is {smallest_defect_px:g} px")
    height, width = _round(h * scale, up), _round(w * scale, up)
    return InputGeometry(height, width, (h, w), f"frames {w}x{h}: {why}, aspect kept, sides multiples of "
                                                f"{INPUT_MULTIPLE}")


def fixed_geometry(height: int, width: int, frame: tuple[int, int], reason: str) -> InputGeometry:
    """A geometry given by the model repository (a product's classifier fixes it at its first version)."""
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise ValueError(f"input {height} x {width}: sides must be multiples of {INPUT_MULTIPLE}")
    return InputGeometry(height, width, frame, reason)
