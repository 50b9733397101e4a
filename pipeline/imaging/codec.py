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
