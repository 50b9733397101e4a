"""The one image preprocessing of the tablet classifier, shared by training and serving.

Training calls `prepare_pil` on rendered or loaded images; Triton's `tablet_preprocess` python
model calls `prepare_image` on the encoded frame bytes. Both end in the same code, so the model
never sees a different input in production than in training. Only numpy and PIL (and
`pipeline.wire.codec`, which needs no more): this module is imported inside Triton's python
backend stub, Python 3.10.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.wire.codec import check_frame_size

# The simulated camera delivers 160 x 160 frames: the model sees them at full resolution. A
# product whose frames have another shape gets its own input geometry (pipeline.model.geometry).
MODEL_INPUT_SIZE = 160
# An input geometry: an int S for S x S, or (height, width).
Size = int | tuple[int, int]
# Fixed normalisation (not dataset statistics): maps 0..255 to [-2, 2].
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def hw(size: Size) -> tuple[int, int]:
    """(height, width) of an input geometry given as S or (height, width)."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 8 or w < 8:
        raise ValueError(f"input geometry must be at least 8 x 8, got {h} x {w}")
    return h, w


def prepare_image(data: bytes | bytearray | memoryview, size: Size = MODEL_INPUT_SIZE) -> np.ndarray:
    """Decode PNG/JPEG bytes into the model input: float32 [3, H, W] (`size`), normalised.

    Raises ValueError with the reason when the bytes are empty, not an image, of an implausible
    size (`check_frame_size`, before decoding), truncated or corrupt, so a caller can fail that
    one frame and keep going.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(bytes(data)))
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, DecompressionBombError
        raise ValueError(f"not a readable image ({len(data)} bytes): {exc}") from None
    if img.format not in ("PNG", "JPEG"):
        raise ValueError(f"image format {img.format} is not PNG or JPEG")
    check_frame_size(img.width, img.height, len(data))  # from the header, before decoding
    try:
        img.load()
    except Exception as exc:  # truncated or corrupt pixel data
        raise ValueError(f"corrupt {img.format} image ({len(data)} bytes): {exc}") from None
    return prepare_pil(img, size)


def prepare_pil(img: Image.Image, size: Size = MODEL_INPUT_SIZE) -> np.ndarray:
    """Model input from a decoded image: RGB, resized to the input geometry (H, W), float32 CHW
    normalised.

    The whole frame is scaled to the geometry (the whole unit stays in view); a product's
    geometry keeps its frames' aspect (pipeline.model.geometry), so this only changes scale.
    """
    h, w = hw(size)
    rgb = img.convert("RGB")
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(rgb, dtype=np.float32)
    arr = (arr * (1.0 / 255.0) - PIXEL_MEAN) * (1.0 / PIXEL_STD)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def restore_pil(tensor: np.ndarray) -> Image.Image:
    """Inverse of `prepare_pil` (up to resizing): for looking at what the model saw."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tensor.shape}")
    arr = (tensor.transpose(1, 2, 0) * PIXEL_STD + PIXEL_MEAN) * 255.0
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="RGB")
