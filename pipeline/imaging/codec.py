"""Encoding of rendered frames into the bytes a camera gateway sends (PNG or JPEG)."""

from __future__ import annotations

import io

from PIL import Image


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
