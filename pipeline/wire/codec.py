"""Encoding of rendered frames into the bytes a camera gateway sends (PNG or JPEG), and the one
decoder of such frames the measurement models use (`decode_rgb`)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Refuse decompression bombs before decoding them: a camera frame is far smaller than 16 Mpx.
MAX_FRAME_PIXELS = 4096 * 4096
MAX_FRAME_BYTES = 20 * 1024 * 1024
# Smaller than this on a side, a frame cannot show a whole unit.
MIN_FRAME_SIDE = 32
FRAME_FORMATS: tuple[str, ...] = ("PNG", "JPEG")
# "Nothing to inspect", judged on a grey thumbnail of at most STATS_PX a side. Every simulated
# product's frames have a grey-level std >= 23 and < 5 % clipped pixels (docs/benchmarks.md).
STATS_PX = 64
BLANK_STD = 4.0  # a frame flatter than this is blank (grey, black or white)
SATURATED_FRACTION = 0.5  # more than this share of pixels at >= 250: overexposed
DARK_FRACTION = 0.9  # more than this share of pixels at <= 5: no light


def encode_png(img: Image.Image) -> bytes:
    """Lossless PNG bytes of `img` (what the simulated camera publishes by default)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    """JPEG bytes of `img`, for cameras and links that send lossy frames."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def check_frame_size(width: int, height: int, n_bytes: int, max_pixels: int = MAX_FRAME_PIXELS) -> None:
    """ValueError unless a frame of `width` x `height` px in `n_bytes` is a plausible camera frame.

    Called with the size from the encoded header (PIL's `Image.open` reads it without decoding),
    so an absurd frame is refused before its pixels cost memory or time."""
    if n_bytes > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {n_bytes} bytes is larger than {MAX_FRAME_BYTES} bytes")
    if width * height > max_pixels:
        raise ValueError(f"image of {width}x{height} px is larger than {max_pixels} px")
    if min(width, height) < MIN_FRAME_SIDE:
        raise ValueError(f"image of {width}x{height} px is smaller than {MIN_FRAME_SIDE} px on a side")


def open_frame(data: bytes | bytearray | memoryview, max_pixels: int = MAX_FRAME_PIXELS) -> Image.Image:
    """An encoded frame opened (header read, pixels not decoded yet) and checked: PNG or JPEG of
    a plausible size (`check_frame_size`). ValueError with the reason for anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"image must be encoded PNG/JPEG bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("image is empty (0 bytes)")
    if len(data) > MAX_FRAME_BYTES:  # before PIL buffers it
        raise ValueError(f"frame of {len(data)} bytes is larger than {MAX_FRAME_BYTES} bytes")
    try:
        img = Image.open(io.BytesIO(bytes(data)))
    except Exception as exc:  # PIL: UnidentifiedImageError, DecompressionBombError, ...
        raise ValueError(f"not a decodable PNG/JPEG image ({len(data)} bytes): {exc}") from None
    if img.format not in FRAME_FORMATS:
        img.close()
        raise ValueError(f"image format {img.format} is not PNG or JPEG")
    try:
        check_frame_size(img.width, img.height, len(data), max_pixels)
    except ValueError:
        img.close()
        raise
    return img


def nothing_to_inspect(data: bytes) -> str | None:
    """Why a frame shows nothing to inspect (blank, overexposed, dark), None when it shows
    something. Judged on a small grey thumbnail: JPEG decodes at reduced size directly.
    ValueError when `data` is not a usable frame (`open_frame`)."""
    with open_frame(data) as img:
        img.draft("L", (STATS_PX, STATS_PX))
        try:
            grey = img.convert("L")
        except Exception as exc:  # truncated or corrupt data, found while decoding
            raise ValueError(f"not a decodable PNG/JPEG image ({len(data)} bytes): {exc}") from None
    grey.thumbnail((STATS_PX, STATS_PX))
    px = np.asarray(grey, dtype=np.float32)
    if float(px.std()) < BLANK_STD:
        return f"blank frame (grey level {px.mean():.0f} +- {px.std():.2f}): nothing to inspect"
    saturated = float((px >= 250).mean())
    if saturated > SATURATED_FRACTION:
        return f"overexposed frame ({saturated:.0%} of pixels saturated): nothing to inspect"
    dark = float((px <= 5).mean())
    if dark > DARK_FRACTION:
        return f"dark frame ({dark:.0%} of pixels black): nothing to inspect"
    return None


def thumbnail_jpeg(data: bytes, max_px: int, quality: int = 85) -> bytes | None:
    """A JPEG of encoded image `data` no larger than `max_px` on its longest side; None when
    `data` is not a usable frame (such a frame is documented by its hash alone)."""
    try:
        with open_frame(data) as img:
            img.draft("RGB", (max_px, max_px))  # JPEG sources decode at reduced size directly
            small = img.convert("RGB")
            small.thumbnail((max_px, max_px))
    except Exception:  # noqa: BLE001 - refused by open_frame, or corrupt pixel data: no image
        return None
    return encode_jpeg(small, quality)


def decode_rgb(data: bytes, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """Encoded frame (PNG/JPEG bytes) -> uint8 RGB [H, W, 3].

    ValueError with the reason for anything else: refused by `open_frame` (not bytes, empty,
    another format, an implausible size, checked from the header before decoding), or
    undecodable (truncated, corrupt).
    """
    with open_frame(data, max_pixels) as img:
        try:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except Exception as exc:  # truncated or corrupt data, found while decoding
            raise ValueError(f"not a decodable PNG/JPEG image ({len(data)} bytes): {exc}") from None
