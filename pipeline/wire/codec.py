"""Encoding of rendered frames into the bytes a camera gateway sends (PNG or JPEG), and the one
decoder of such frames the measurement models use (`decode_rgb`)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Refuse decompression bombs before decoding them: a camera frame is far smaller than 16 Mpx.
MAX_FRAME_PIXELS = 4096 * 4096
FRAME_FORMATS: tuple[str, ...] = ("PNG", "JPEG")


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


def thumbnail_jpeg(data: bytes, max_px: int, quality: int = 85) -> bytes | None:
    """A JPEG of encoded image `data` no larger than `max_px` on its longest side; None when
    `data` is not a decodable image (such a frame is documented by its hash alone)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (max_px, max_px))  # JPEG sources decode at reduced size directly
            small = img.convert("RGB")
            small.thumbnail((max_px, max_px))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return encode_jpeg(small, quality)


def decode_rgb(data: bytes, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """Encoded frame (PNG/JPEG bytes) -> uint8 RGB [H, W, 3].

    ValueError with the reason for anything else: not bytes, empty, another image format, more
    than `max_pixels` pixels (checked from the header, before decoding), or undecodable
    (truncated, corrupt, a decompression bomb by PIL's own limit).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"image must be encoded PNG/JPEG bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(bytes(data)))
    except Exception as exc:  # PIL: UnidentifiedImageError, DecompressionBombError, ...
        raise ValueError(f"not a decodable PNG/JPEG image ({len(data)} bytes): {exc}") from None
    with img:
        if img.format not in FRAME_FORMATS:
            raise ValueError(f"image format {img.format} is not PNG or JPEG")
        if img.width * img.height > max_pixels:
            raise ValueError(f"image of {img.width}x{img.height} px is larger than {max_pixels} px")
        try:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except Exception as exc:  # truncated or corrupt data, found while decoding
            raise ValueError(f"not a decodable PNG/JPEG image ({len(data)} bytes): {exc}") from None
