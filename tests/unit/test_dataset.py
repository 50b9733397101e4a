"""Dataset folder format: generate -> load round trip, hashing, and every kind of bad row."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets.folder import DatasetError, Row, dataset_hash, load_dataset, write_dataset
from pipeline.imaging.generate import generate_dataset
from pipeline.imaging.tablets import render_tablet
from pipeline.wire.codec import encode_png

ROUND = "tablet-round-white-10mm"
OVAL = "tablet-oval-yellow-14mm"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("gen") / "ds", 12, [ROUND, OVAL], 0.5, seed=5, size=96)


def test_generate_then_load_round_trip(generated: Path) -> None:
    ds = load_dataset(generated)
    assert len(ds) == 12 and ds.products == (OVAL, ROUND)
    header = (generated / "labels.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "image,product,label,defect"
    for row in ds:
        assert row.image.is_absolute() and row.image.is_file()
        rel = ds.relative(row)
        assert "\\" not in rel and rel.startswith(row.product + "/")
        assert (row.label, row.defect) == (("good", "none") if "/good/" in rel else ("defect", rel.split("/")[1]))
        assert Image.open(row.image).size == (96, 96)
    assert {r.label for r in ds} == {"good", "defect"}


def test_every_simulated_product_kind_makes_a_dataset(tmp_path: Path) -> None:
    from pipeline.imaging.blisters import BLISTER_DEFECTS
    from pipeline.imaging.labels import LABEL_DEFECTS
    from pipeline.imaging.vials import VIAL_DEFECTS

    kinds = {"vial-2r-clear-5ml": VIAL_DEFECTS, "blister-2x5-round-white": BLISTER_DEFECTS,
             "carton-label-gs1": LABEL_DEFECTS}
    ds = load_dataset(generate_dataset(tmp_path / "ds", 12, list(kinds), 0.6, seed=3))
    assert ds.products == tuple(sorted(kinds)) and len(ds) == 12
    for row in ds:
        assert row.defect == "none" or row.defect in kinds[row.product], row
    assert {r.label for r in ds} == {"good", "defect"}
    with pytest.raises(ValueError, match="valid products: .*vial-2r-clear-5ml"):
        generate_dataset(tmp_path / "bad", 2, ["syringe-1ml"], 0.5, seed=1)


def test_product_filter(generated: Path) -> None:
    ds = load_dataset(generated, product=OVAL)
    assert len(ds) == 6 and ds.products == (OVAL,)


def test_generation_is_seeded_and_hash_tracks_content(tmp_path: Path, generated: Path) -> None:
    same = generate_dataset(tmp_path / "same", 12, [ROUND, OVAL], 0.5, seed=5, size=96)
    other = generate_dataset(tmp_path / "other", 12, [ROUND, OVAL], 0.5, seed=6, size=96)
    h = dataset_hash(load_dataset(generated))
    assert len(h) == 64
    assert dataset_hash(load_dataset(same)) == h
    assert dataset_hash(load_dataset(other)) != h
    # Renaming files and reordering rows keeps the hash; changing a label does not.
    ds = load_dataset(same)
    moved = tmp_path / "moved"
    rows = []
    for i, row in enumerate(reversed(ds.rows)):
        target = moved / "all" / f"img{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(row.image, target)
        rows.append(Row(target, row.product, row.label, row.defect))
    write_dataset(moved, rows)
    assert dataset_hash(load_dataset(moved)) == h
    flipped = [Row(rows[0].image, rows[0].product, "defect" if rows[0].label == "good" else "good",
                   "crack" if rows[0].label == "good" else "none")] + rows[1:]
    write_dataset(moved, flipped)
    assert dataset_hash(load_dataset(moved)) != h


def test_generate_refuses_existing_dataset(generated: Path) -> None:
    with pytest.raises(FileExistsError):
        generate_dataset(generated, 2, [ROUND], 0.5, seed=1)
    with pytest.raises(ValueError, match="valid products"):
        generate_dataset(generated.parent / "x", 2, ["tablet-unknown"], 0.5, seed=1)


def _write(root: Path, lines: list[str]) -> None:
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _png(path: Path, mode: str = "RGB", fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = render_tablet(np.random.default_rng(0), ROUND, None, size=64).convert(mode)
    img.save(path, format=fmt)


def test_every_bad_row_is_reported_together(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    _png(root / "ok/good.png")
    _png(root / "ok/crack.png")
    _png(root / "ok/rgba.png", mode="RGBA")
    _png(root / "ok/bitmap.bmp", fmt="BMP")
    (root / "broken").mkdir()
    (root / "broken/garbage.png").write_bytes(b"this is not an image")
    full = encode_png(render_tablet(np.random.default_rng(1), ROUND, None, size=64))
    (root / "broken/truncated.png").write_bytes(full[: len(full) // 2])
    _write(root, [
        "image,product,label,defect",
        f"ok/good.png,{ROUND},good,none",                # 2 fine
        f"ok/crack.png,{ROUND},defect,crack",            # 3 fine
        f"missing/nothere.png,{ROUND},good,none",        # 4 missing image
        f"broken/garbage.png,{ROUND},good,none",         # 5 unreadable
        f"broken/truncated.png,{ROUND},good,none",       # 6 truncated
        f"ok/good.png,{ROUND},Good,none",                # 7 bad label (and duplicate)
        f"ok/crack.png,{ROUND},good,crack",              # 8 good with a defect (and duplicate)
        f"ok/rgba.png,{ROUND},defect,none",              # 9 defect without class + RGBA
        f"ok/bitmap.bmp,{ROUND},defect,Chip",            # 10 bad class name + BMP
        f"../outside.png,{ROUND},good,none",             # 11 escapes the folder
        f"ok\\good.png,{ROUND},good,none",               # 12 backslash
        f"ok/good.png,{ROUND}",                          # 13 short row
        "ok/x.png,,good,none",                          # 14 empty product, missing file
    ])
    with pytest.raises(DatasetError) as exc:
        load_dataset(root)
    problems = exc.value.problems
    by_line: dict[int, list[str]] = {}
    for where, reason in problems:
        by_line.setdefault(int(where.split()[0].split(":")[1]), []).append(reason)
    assert set(by_line) == set(range(4, 15))
    expect = {
        4: ["not found"],
        5: ["unreadable"],
        6: ["unreadable"],
        7: ["label 'Good'", "listed again"],
        8: ["label 'good' but defect is 'crack'", "listed again"],
        9: ["needs a defect class", "mode RGBA"],
        10: ["'Chip'", "BMP"],
        11: ["inside it"],
        12: ["forward slashes"],
        13: ["2 fields"],
        14: ["empty product", "not found"],
    }
    for line, needles in expect.items():
        for needle in needles:
            assert any(needle in reason for reason in by_line[line]), (line, needle, by_line[line])
    message = str(exc.value)
    assert f"{len(problems)} problem(s)" in message
    for line in range(4, 15):
        assert f"labels.csv:{line}" in message


def test_header_problems(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _write(tmp_path, ["image,product,label", f"a.png,{ROUND},good"])
    with pytest.raises(DatasetError, match="missing column.*defect"):
        load_dataset(tmp_path)
    _write(tmp_path, ["product,image,label,defect", f"{ROUND},a.png,good,none"])
    with pytest.raises(DatasetError, match="order"):
        load_dataset(tmp_path)
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(DatasetError, match="labels.csv"):
        load_dataset(tmp_path)


def test_extra_columns_ignored_and_grey_jpeg_accepted(tmp_path: Path) -> None:
    _png(tmp_path / "imgs/a.jpg", mode="L", fmt="JPEG")
    _write(tmp_path, ["lot,image,product,label,defect,note", f"L1,imgs/a.jpg,{ROUND},defect,low-fill,x"])
    ds = load_dataset(tmp_path)
    assert [(r.product, r.label, r.defect) for r in ds] == [(ROUND, "defect", "low-fill")]


def test_product_without_rows(generated: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        load_dataset(generated, product="capsule-red-0")
    assert "no rows for product 'capsule-red-0'" in str(exc.value)
    assert ROUND in str(exc.value) and OVAL in str(exc.value)


def test_write_dataset_reports_every_bad_row(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    rows = [
        Row(tmp_path / "a.png", ROUND, "good", "none"),
        Row(tmp_path / "a.png", ROUND, "good", "chip"),
        Row(tmp_path.parent / "elsewhere.png", ROUND, "good", "none"),
        Row(Path("a.png"), "", "bad", "none"),
    ]
    with pytest.raises(DatasetError) as exc:
        write_dataset(tmp_path, rows)
    wheres = {w.split()[1] for w, _ in exc.value.problems}
    assert wheres == {"2", "3", "4"}
    assert not (tmp_path / "labels.csv").exists()
    path = write_dataset(tmp_path, rows[:1])
    assert path.read_text(encoding="utf-8") == f"image,product,label,defect\na.png,{ROUND},good,none\n"
