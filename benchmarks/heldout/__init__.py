"""Held-out products from an independent renderer (issue 14).

Written separately from the training renderer `pipeline.imaging` and importing nothing from
`pipeline` at all (numpy and Pillow only): other product shapes and aspect ratios (a scored
biconvex tablet, a coloured oval tablet, a two-tone hard capsule, an upright 2 ml vial), its
own shading, lighting, background, noise, blur and pose jitter, and defects down to the edge
of visibility. Used to judge the shipped training on products the project never saw:

    python -m benchmarks.heldout.generate --out DIR --product all --n 600 --seed 1
"""

from benchmarks.heldout.products import PRODUCTS, ProductSpec, render_unit

__all__ = ["PRODUCTS", "ProductSpec", "render_unit"]
