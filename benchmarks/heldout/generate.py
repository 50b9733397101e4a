"""Write a dataset folder (docs/datasets.md) of held-out products from the independent renderer.

    python -m benchmarks.heldout.generate --out DIR --product P|all --n 600 --seed 1 [--defect-rate 0.5]

`--n` images per product: round(n * defect-rate) defective, the defect classes in equal shares,
a third of the defects (of the classes that have a subtle form) subtle; order shuffled by the
seed. Images go to `<product>/<good|defect class>/NNNNNN.png`; labels.csv has the four columns
of the format plus `subtle` (0/1). The same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.heldout.products import PRODUCTS, render_unit

COLUMNS = ("image", "product", "label", "defect", "subtle")


@dataclass(frozen=True)
class Planned:
    """One unit to render: its defect class (None: good) and whether the defect is subtle."""

    defect: str | None
    subtle: bool


def plan(product: str, n: int, defect_rate: float, seed: int) -> list[Planned]:
    """The labels of `n` units of `product`, in a seeded shuffled order."""
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect rate must be in [0, 1], got {defect_rate}")
    spec = PRODUCTS[product]
    rng = np.random.default_rng([seed, zlib.crc32(product.encode()), 0])
    n_def = int(round(n * defect_rate))
    classes = [spec.defects[i % len(spec.defects)] for i in range(n_def)]
    can = [i for i, c in enumerate(classes) if c in spec.subtle_classes]
    subtle = set(rng.permutation(can)[: int(round(n_def / 3))].tolist()) if can else set()
    units = [Planned(c, i in subtle) for i, c in enumerate(classes)] + [Planned(None, False)] * (n - n_def)
    return [units[i] for i in rng.permutation(len(units))]


def generate(out: Path, products: list[str], n: int, seed: int, defect_rate: float = 0.5) -> Path:
    """Render `n` units of each product into the dataset folder `out`; returns labels.csv."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str, str]] = []
    counter = 0
    for product in products:
        if product not in PRODUCTS:
            raise ValueError(f"unknown held-out product {product!r}; products: {', '.join(PRODUCTS)}")
        key = zlib.crc32(product.encode())
        for i, unit in enumerate(plan(product, n, defect_rate, seed)):
            counter += 1
            rng = np.random.default_rng([seed, key, 1, i])
            image = render_unit(product, rng, unit.defect, unit.subtle)
            folder = unit.defect or "good"
            rel = f"{product}/{folder}/{counter:06d}.png"
            (out / product / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, "RGB").save(out / rel, format="PNG", compress_level=1)
            rows.append((rel, product, "defect" if unit.defect else "good", unit.defect or "none",
                         "1" if unit.subtle else "0"))
    labels = out / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows)
    return labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--product", default="all", help=f"one of {', '.join(PRODUCTS)}, or 'all' (default)")
    ap.add_argument("--n", type=int, default=600, help="images per product (default 600)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--defect-rate", type=float, default=0.5)
    args = ap.parse_args(argv)
    products = list(PRODUCTS) if args.product == "all" else [p.strip() for p in args.product.split(",")]
    for p in products:
        if p not in PRODUCTS:
            ap.error(f"unknown product {p!r}; products: {', '.join(PRODUCTS)}, all")
    labels = generate(args.out, products, args.n, args.seed, args.defect_rate)
    print(f"wrote {args.n * len(products)} images of {', '.join(products)} -> {labels}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
