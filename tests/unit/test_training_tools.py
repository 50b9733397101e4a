"""Pieces of training that need no training run: calibration, synthetic anomalies, shifted datasets."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.datasets.folder import DatasetError, load_dataset
from pipeline.datasets.shift import Shift, shift_dataset, shift_image
from pipeline.imaging.generate import generate_dataset
from pipeline.model.preprocess import prepare_image
from pipeline.model.synthetic import KINDS, foreground, synthesize, synthesize_batch
from pipeline.model.train import calibrate

ROUND = "tablet-round-white-10mm"


def test_calibration_uses_the_quantile_when_it_can_and_a_tail_fit_when_it_cannot() -> None:
    rng = np.random.default_rng(0)

    def goods(n: int) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-rng.normal(-6.0, 1.5, n)))  # logits ~ N(-6, 1.5)

    big = goods(2000)
    t, how = calibrate(big, 0.01)
    assert "empirical" in how and (big > t).mean() == pytest.approx(0.01, abs=0.001)
    small = goods(75)
    t, how = calibrate(small, 0.01)
    assert "normal fit" in how
    fresh = goods(200_000)
    assert 0.004 < (fresh > t).mean() < 0.025  # near 1 % on units it never saw
    t_reject, _ = calibrate(small, 0.0025)
    assert t_reject > t


def test_synthetic_anomalies_change_the_unit_where_their_mask_says() -> None:
    ds_img = prepare_image(_png(0))
    x = torch.from_numpy(ds_img)
    fg = foreground(x)
    assert 0.05 < fg.float().mean() < 0.6  # the unit, not the belt
    g = torch.Generator().manual_seed(0)
    for kind in KINDS:
        out, mask = synthesize(x, g, kind)
        changed = (out - x).abs().amax(0) > 0.15
        assert changed.any(), kind
        assert mask.shape == x.shape[1:] and mask.max() > 0
        assert not (changed & (mask == 0)).any(), kind  # no visible change outside the mask
    a, ma = synthesize_batch(x[None].repeat(3, 1, 1, 1), torch.Generator().manual_seed(5))
    b, mb = synthesize_batch(x[None].repeat(3, 1, 1, 1), torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(ma, mb) and ma.shape == (3, 20, 20)
    with pytest.raises(ValueError, match="unknown"):
        synthesize(x, g, "simulator-chip")


def _png(seed: int) -> bytes:
    from pipeline.imaging.tablets import render_tablet
    from pipeline.wire.codec import encode_png

    return encode_png(render_tablet(np.random.default_rng(seed), ROUND, None))


def test_shift_image_light_blur_and_position() -> None:
    img = Image.new("RGB", (40, 40), (100, 100, 100))
    img.paste((200, 200, 200), (10, 10, 20, 20))
    out = shift_image(img, Shift(brightness=0.5, blur=0.0, shift=3, seed=0), np.random.default_rng(1))
    a = np.asarray(out)
    assert out.size == img.size and a.max() == 100 and a.min() == 50  # light halved
    ys, xs = np.nonzero(a[:, :, 0] == 100)
    dy, dx = ys.min() - 10, xs.min() - 10
    assert (dy, dx) != (0, 0) and abs(dy) <= 3 and abs(dx) <= 3
    blurred = np.asarray(shift_image(img, Shift(brightness=1.0, blur=1.5, shift=0), np.random.default_rng(0)))
    assert 100 < blurred[9, 15, 0] < 200  # the edge is soft now
    with pytest.raises(ValueError):
        Shift(brightness=0.0).check()


def test_shifted_copy_of_a_dataset_folder(tmp_path: Path) -> None:
    src = generate_dataset(tmp_path / "src", 6, [ROUND], 0.5, seed=1)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "dataset", "shift", "--data", str(src), "--out", str(tmp_path / "out"),
         "--brightness", "0.8", "--blur", "1.0", "--shift", "3", "--seed", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    original = list(csv.reader((src / "labels.csv").open()))
    copy = list(csv.reader((tmp_path / "out/labels.csv").open()))
    assert copy == original  # same rows, same relative paths, same labels
    out = load_dataset(tmp_path / "out")
    for row in out.rows:
        a = np.asarray(Image.open(src / out.relative(row)), dtype=np.float64)
        b = np.asarray(Image.open(row.image), dtype=np.float64)
        assert a.shape == b.shape and 0.7 < b.mean() / a.mean() < 0.9
    with pytest.raises(FileExistsError):
        shift_dataset(src, tmp_path / "out", Shift())
    (src / out.relative(out.rows[0])).write_bytes(b"broken")
    with pytest.raises(DatasetError, match="unreadable"):
        shift_dataset(src, tmp_path / "again", Shift())
    assert not (tmp_path / "again").exists()
