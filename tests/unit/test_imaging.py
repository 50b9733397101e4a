"""Tablet renderer: determinism, every product x defect, defects where the mask says, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.imaging.products import (
    ASSORTED_COLOR_CLEARANCE,
    ASSORTED_TABLETS,
    DEFECT_CLASSES,
    PRODUCTS,
    draw_assorted_spec,
)
from pipeline.imaging.raster import illumination, pixel_grid, sensor_noise, shift_px
from pipeline.imaging.tablets import draw_unit, render_tablet, render_tablet_with_mask, sample_unit
from pipeline.wire.codec import decode_rgb, encode_jpeg, encode_png

ROUND = "tablet-round-white-10mm"
OVAL = "tablet-oval-yellow-14mm"


def _px(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_required_products_and_classes() -> None:
    assert {ROUND, OVAL} <= set(PRODUCTS)
    assert PRODUCTS[ROUND].shape == "round" and PRODUCTS[ROUND].scored
    assert PRODUCTS[OVAL].shape == "oval"
    assert DEFECT_CLASSES == ("crack", "chip", "discoloration", "contamination")


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    a = render_tablet(np.random.default_rng(42), ROUND, "crack")
    b = render_tablet(np.random.default_rng(42), ROUND, "crack")
    c = render_tablet(np.random.default_rng(43), ROUND, "crack")
    assert encode_png(a) == encode_png(b)
    assert np.abs(_px(a) - _px(c)).mean() > 1.0


@pytest.mark.parametrize("product", [ROUND, OVAL])
@pytest.mark.parametrize("defect", [None, *DEFECT_CLASSES])
@pytest.mark.parametrize("subtle", [False, True])
def test_every_product_and_defect_renders(product: str, defect: str | None, subtle: bool) -> None:
    img = render_tablet(np.random.default_rng(7), product, defect, subtle=subtle)
    assert img.mode == "RGB" and img.size == (160, 160)
    px = _px(img)
    # A bright tablet on a darker belt: the frame is neither blank nor saturated.
    centre = px[60:100, 60:100].mean()
    corners = np.concatenate([px[:12, :12].ravel(), px[-12:, -12:].ravel()]).mean()
    assert centre > corners + 60
    assert (px == 255).mean() < 0.01


@pytest.mark.parametrize("product", [ROUND, OVAL, ASSORTED_TABLETS])
@pytest.mark.parametrize("defect", DEFECT_CLASSES)
def test_defect_changes_pixels_where_its_mask_is(product: str, defect: str) -> None:
    """Same seed with and without the defect: the difference sits on the defect's mask."""
    for seed in range(3):
        good, empty = render_tablet_with_mask(np.random.default_rng(seed), product, None)
        bad, mask = render_tablet_with_mask(np.random.default_rng(seed), product, defect)
        assert empty.max() == 0.0 and mask.max() > 0.5
        diff = np.abs(_px(bad) - _px(good)).sum(axis=2).astype(float)
        assert diff.sum() > 0
        # Dilate the mask by a few pixels (blur, shading and the chip's shadow spread a little).
        near = mask > 0.05
        for _ in range(4):
            near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) | np.roll(near, 1, 1) | np.roll(near, -1, 1)
        assert diff[near].sum() / diff.sum() > 0.9, (defect, seed)


def test_assorted_family_varies_and_keeps_clear_of_every_catalogued_product() -> None:
    specs = [draw_assorted_spec(np.random.default_rng([5, i])) for i in range(400)]
    assert specs[:20] == [draw_assorted_spec(np.random.default_rng([5, i])) for i in range(20)]
    assert {s.shape for s in specs} == {"round", "oval"} and {s.scored for s in specs} == {True, False}
    colors = np.array([s.color for s in specs])
    assert colors.std(axis=0).min() > 0.12  # every channel varies: whites, greys and strong hues
    lengths = np.array([s.length_mm for s in specs])
    assert lengths.min() < 8.0 and lengths.max() > 13.5
    for s in specs:
        assert s.product == ASSORTED_TABLETS and s.width_mm <= s.length_mm
        for product in PRODUCTS.values():
            if s.shape == product.shape:
                assert np.linalg.norm(np.subtract(s.color, product.color)) >= ASSORTED_COLOR_CLEARANCE, (s, product)
    # A counterfactual pair shows one tablet: the spec is drawn first from the unit's generator.
    a = render_tablet(np.random.default_rng(9), ASSORTED_TABLETS, None)
    b = render_tablet(np.random.default_rng(9), ASSORTED_TABLETS, None)
    assert encode_png(a) == encode_png(b)
    assert ASSORTED_TABLETS not in PRODUCTS  # a training family, not a product a line can make


@pytest.mark.parametrize("defect", DEFECT_CLASSES)
def test_subtle_defects_are_weaker_but_present(defect: str) -> None:
    full, subtle = [], []
    for seed in range(6):
        good = _px(render_tablet(np.random.default_rng(seed), ROUND, None))
        full.append(np.abs(_px(render_tablet(np.random.default_rng(seed), ROUND, defect)) - good).sum())
        subtle.append(np.abs(_px(render_tablet(np.random.default_rng(seed), ROUND, defect, subtle=True)) - good).sum())
    assert min(subtle) > 0
    assert np.mean(subtle) < 0.8 * np.mean(full)


def test_good_units_vary_naturally() -> None:
    """Position, brightness and background change from unit to unit, so no trivial cue exists."""
    centroids, tablet_levels, belt_levels = [], [], []
    for seed in range(10):
        px = _px(render_tablet(np.random.default_rng(seed), ROUND, None)).mean(axis=2)
        tablet = px > (px.max() + np.median(px[:20, :20])) / 2
        ys, xs = np.nonzero(tablet)
        centroids.append((xs.mean(), ys.mean()))
        tablet_levels.append(px[tablet].mean())
        belt_levels.append(px[~tablet].mean())
    c = np.array(centroids)
    assert np.ptp(c[:, 0]) > 2 or np.ptp(c[:, 1]) > 2
    assert np.ptp(tablet_levels) > 8
    assert np.ptp(belt_levels) > 5


def test_size_parameter() -> None:
    assert render_tablet(np.random.default_rng(0), OVAL, "chip", size=96).size == (96, 96)
    with pytest.raises(ValueError, match="size"):
        render_tablet(np.random.default_rng(0), ROUND, None, size=10)


def test_unknown_product_or_defect_names_valid_ones() -> None:
    with pytest.raises(ValueError) as exc:
        render_tablet(np.random.default_rng(0), "tablet-square-blue", None)
    assert ROUND in str(exc.value) and OVAL in str(exc.value)
    with pytest.raises(ValueError) as exc:
        render_tablet(np.random.default_rng(0), ROUND, "scratch")
    for name in DEFECT_CLASSES:
        assert name in str(exc.value)


def test_draw_unit_rates_and_uniform_classes() -> None:
    rng = np.random.default_rng(0)
    draws = [draw_unit(rng, 0.5, 0.33) for _ in range(4000)]
    defects = [d for d, _ in draws if d is not None]
    assert 0.46 < len(defects) / len(draws) < 0.54
    counts = np.array([defects.count(c) for c in DEFECT_CLASSES])
    assert counts.min() > 0.85 * len(defects) / 4
    subtle = [s for d, s in draws if d is not None]
    assert 0.28 < np.mean(subtle) < 0.38
    assert all(not s for d, s in draws if d is None)
    with pytest.raises(ValueError):
        draw_unit(rng, 1.5)
    other = [draw_unit(rng, 1.0, 0.0, ("a", "b"))[0] for _ in range(50)]
    assert set(other) == {"a", "b"}


def test_sample_unit_follows_defect_rate() -> None:
    rng = np.random.default_rng(1)
    assert all(sample_unit(rng, ROUND, 0.0)[1] is None for _ in range(3))
    assert all(sample_unit(rng, OVAL, 1.0)[1] in DEFECT_CLASSES for _ in range(3))


def test_encoders_round_trip() -> None:
    img = render_tablet(np.random.default_rng(3), ROUND, "contamination")
    png = encode_png(img)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(img))
    jpg = encode_jpeg(img, quality=90)
    assert jpg.startswith(b"\xff\xd8\xff")
    decoded = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"), dtype=np.int16)
    assert np.abs(decoded - _px(img)).mean() < 3.0
    with pytest.raises(ValueError):
        encode_jpeg(img, quality=0)


def test_decode_rgb_decodes_png_and_jpeg_and_refuses_the_rest() -> None:
    img = render_tablet(np.random.default_rng(3), ROUND, None)
    rgb = decode_rgb(encode_png(img))
    assert rgb.dtype == np.uint8 and rgb.shape == (160, 160, 3) and np.array_equal(rgb, np.asarray(img))
    assert decode_rgb(bytearray(encode_jpeg(img, 90))).shape == (160, 160, 3)
    grey = io.BytesIO()
    img.convert("L").save(grey, format="PNG")
    assert np.array_equal(decode_rgb(grey.getvalue())[..., 1], np.asarray(img.convert("L")))
    gif = io.BytesIO()
    img.save(gif, format="GIF")
    for data, reason in (
        ("frame", "must be encoded PNG/JPEG bytes, got str"),
        (b"", "empty"),
        (b"not an image", "not a decodable PNG/JPEG image"),
        (encode_png(img)[:200], "not a decodable PNG/JPEG image"),  # truncated
        (gif.getvalue(), "format GIF is not PNG or JPEG"),
    ):
        with pytest.raises(ValueError, match=reason):
            decode_rgb(data)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="160x160 px is larger than 10000 px"):
        decode_rgb(encode_png(img), max_pixels=100 * 100)


def test_raster_helpers_on_rectangular_frames() -> None:
    ys, xs = pixel_grid(3, 5)
    assert ys.shape == xs.shape == (3, 5) and xs[2, 4] == 4 and ys[2, 4] == 2 and not xs.flags.writeable
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(shift_px(a, 1.2, -0.6), [[0, 4, 5, 6], [0, 8, 9, 10], [0, 0, 0, 0]])
    light = illumination(np.random.default_rng(0), (40, 90), gradient=(0.1, 0.1), vignetting=(0.3, 0.3))
    assert light.shape == (40, 90) and np.array_equal(light, illumination(np.random.default_rng(0), (40, 90), (0.1, 0.1), (0.3, 0.3)))
    assert 0.8 < light.min() < light.max() < 1.1
    flat = np.full((40, 90, 3), 0.5, np.float32)
    noisy = sensor_noise(np.random.default_rng(1), flat)
    assert noisy.shape == flat.shape and 0.005 < float((noisy - flat).std()) < 0.02
