"""The independent held-out generator (benchmarks/heldout, issue 14): a valid dataset folder,
every product and class, the stated image sizes, deterministic by seed, and no code shared with
the training renderer `pipeline.imaging`."""

from __future__ import annotations

import ast
import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.heldout.generate import generate  # noqa: E402
from benchmarks.heldout.products import PRODUCTS  # noqa: E402
from pipeline.datasets.folder import load_dataset  # noqa: E402

N = 16  # per product: 8 defective, two of each class


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heldout")
    generate(root, list(PRODUCTS), N, seed=3)
    return root


def test_folder_loads_with_every_product_and_class(folder: Path) -> None:
    root = folder
    ds = load_dataset(root)  # raises DatasetError on any problem
    assert len(ds) == N * len(PRODUCTS)
    assert set(ds.products) == set(PRODUCTS)
    for product, spec in PRODUCTS.items():
        rows = [r for r in ds.rows if r.product == product]
        assert {r.defect for r in rows} == {"none", *spec.defects}
        assert sum(r.is_defect for r in rows) == N // 2
    with (root / "labels.csv").open(encoding="utf-8") as f:
        reader = csv.reader(f)
        assert next(reader) == ["image", "product", "label", "defect", "subtle"]
        body = list(reader)
    subtle = [r for r in body if r[4] == "1"]
    assert subtle and all(r[2] == "defect" for r in subtle)
    assert 0.25 <= len(subtle) / sum(r[2] == "defect" for r in body) <= 0.4
    for r in body:
        sub = r[3] if r[2] == "defect" else "good"
        assert r[0].startswith(f"{r[1]}/{sub}/") and r[0].endswith(".png")


def test_image_sizes(folder: Path) -> None:
    for row in load_dataset(folder).rows:
        spec = PRODUCTS[row.product]
        with Image.open(row.image) as im:
            assert im.mode == "RGB"
            assert im.size == (spec.width, spec.height)
    assert (PRODUCTS["heldout-vial-2ml-upright"].width, PRODUCTS["heldout-vial-2ml-upright"].height) == (96, 192)
    assert PRODUCTS["heldout-capsule-two-tone"].width != PRODUCTS["heldout-capsule-two-tone"].height


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, list(PRODUCTS), 4, seed=7)
    generate(b, list(PRODUCTS), 4, seed=7)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_other_seed_other_images(tmp_path: Path) -> None:
    generate(tmp_path / "s1", ["heldout-vial-2ml-upright"], 4, seed=1)
    generate(tmp_path / "s2", ["heldout-vial-2ml-upright"], 4, seed=2)
    one = sorted((tmp_path / "s1").rglob("*.png"))[0].read_bytes()
    assert all(one != p.read_bytes() for p in (tmp_path / "s2").rglob("*.png"))


def test_shares_no_code_with_the_training_renderer() -> None:
    for path in (ROOT / "benchmarks" / "heldout").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("pipeline"), f"{path.name} imports {name}"
    code = ("import sys, benchmarks.heldout.generate as g; "
            "print(sorted(m for m in sys.modules if m == 'pipeline' or m.startswith('pipeline.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
