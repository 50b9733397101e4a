"""Occlusion-sensitivity localisation (pipeline.dashboard.localize) with a scripted scorer."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.dashboard.localize import (
    Localizer,
    LocalizeUnavailable,
    TritonScorer,
    hottest_box,
    occlusion_map,
    overlay_png,
)
from pipeline.embedded.process import free_port


def red_fraction(png: bytes) -> float:
    """A scripted "model": the defect score is the fraction of strongly red pixels."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float(((a[..., 0] > 170) & (a[..., 1] < 90) & (a[..., 2] < 90)).mean())


class Counting:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, images: list[bytes]) -> list[float]:
        self.calls.append(len(images))
        return [red_fraction(b) for b in images]


def blob_image(cx: int, cy: int, size: tuple[int, int] = (120, 120), r: int = 2) -> bytes:
    """A grey frame with a red speck of 2r+1 px at (cx, cy): small, like a speck or a crack's
    width, so the median occluder removes it."""
    img = Image.new("RGB", size, (215, 215, 205))
    ImageDraw.Draw(img).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(220, 20, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("cx", "cy", "cell"), [(90, 30, (1, 4)), (30, 70, (3, 1)), (110, 110, (5, 5))])
def test_hottest_cell_is_the_blobs_cell(cx: int, cy: int, cell: tuple[int, int]) -> None:
    scorer = Counting()
    heat, base = occlusion_map(blob_image(cx, cy), scorer, grid=6)
    assert scorer.calls == [37]  # the original and 36 variants in one batch
    assert base > 0 and heat.shape == (6, 6)
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert np.unravel_index(int(np.argmax(heat)), heat.shape) == cell
    assert heat[cell] > 0.8  # hiding that cell removes (nearly) all the evidence
    others = np.delete(heat.ravel(), cell[0] * 6 + cell[1])
    assert others.max() < 0.2


def test_overlay_keeps_the_frame_size_and_marks_the_blob() -> None:
    frame = blob_image(90, 30, size=(150, 120))
    heat, _ = occlusion_map(frame, Counting(), grid=6)
    png = overlay_png(frame, heat)
    out = Image.open(io.BytesIO(png))
    assert out.format == "PNG" and out.size == (150, 120)
    box = hottest_box(heat, (150, 120))
    assert box is not None
    x0, y0, x1, y1 = box
    assert x0 <= 90 < x1 and y0 <= 30 < y1
    rgb = np.asarray(out.convert("RGB")).astype(int)
    # far from the blob the frame is untouched; the box outline is drawn in yellow
    assert tuple(rgb[110, 10]) == (215, 215, 205)
    assert tuple(rgb[y0, (x0 + x1) // 2]) == (255, 230, 0)


def test_no_evidence_gives_a_cold_map_and_a_plain_overlay() -> None:
    frame = blob_image(-50, -50)  # no red at all
    heat, base = occlusion_map(frame, Counting(), grid=4)
    assert base == 0.0 and not heat.any()
    assert hottest_box(heat, (120, 120)) is None
    out = np.asarray(Image.open(io.BytesIO(overlay_png(frame, heat))).convert("RGB")).astype(int)
    assert out.shape == (120, 120, 3)
    assert tuple(out[5, 60]) == (215, 215, 205)  # no red anywhere
    label = out[-20:, :100]
    yellow = (label[..., 0] > 180) & (label[..., 1] > 150) & (label[..., 2] < 100)
    assert yellow.sum() > 20  # labelled "no single region" in yellow


def test_bad_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a readable image"):
        occlusion_map(b"not an image", Counting())
    with pytest.raises(ValueError, match="scores for"):
        occlusion_map(blob_image(90, 30), lambda images: [1.0])


def test_localizer_scores_each_unit_once_and_bounds_its_cache() -> None:
    scorer = Counting()
    asked: list[str] = []

    def scorer_for(product: str) -> Counting:
        asked.append(product)
        return scorer

    loc = Localizer(scorer_for, grid=3, cache_size=2)
    frame = blob_image(90, 30)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(loc.overlay("u1", "p", frame))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and scorer.calls == [10] and asked == ["p"]
    loc.overlay("u2", "p", frame)
    loc.overlay("u3", "p", frame)
    assert loc.cached("u1") is None and loc.cached("u3") is not None  # LRU, two kept


def test_unreachable_triton_is_localize_unavailable() -> None:
    scorer = TritonScorer(f"127.0.0.1:{free_port()}", timeout_s=3.0)
    with pytest.raises(LocalizeUnavailable, match="Triton"):
        scorer.for_model("tablet_inspector")([blob_image(90, 30)])
