"""Synthetic inspection images: tablet products, defect classes, renderer and encoders."""

from pipeline.imaging.codec import encode_jpeg, encode_png
from pipeline.imaging.products import DEFECT_CLASSES, PRODUCTS, TabletSpec
from pipeline.imaging.tablets import draw_unit, render_tablet, sample_unit

__all__ = [
    "DEFECT_CLASSES",
    "PRODUCTS",
    "TabletSpec",
    "draw_unit",
    "encode_jpeg",
    "encode_png",
    "render_tablet",
    "sample_unit",
]
