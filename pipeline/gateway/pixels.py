"""GenICam pixel formats: raw camera buffers to numpy images and back, and the encoding of a frame
for the broker (PNG, lossless, by default; JPEG where the recipe asks for it).

Decoding lives apart from the Aravis wrapper so that it is testable without a camera and shared
with the fake cameras (which encode chosen images into the same layouts). Values are the PFNC
codes (GenICam Pixel Format Naming Convention) that cameras put in GVSP leaders.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.recipes.schema import CameraFeatures
from pipeline.wire.codec import encode_jpeg, encode_png

# PFNC name -> code. Only the formats the gateway decodes: 8-bit colour/Bayer and unpacked mono.
PIXEL_FORMATS: dict[str, int] = {
    "Mono8": 0x01080001,
    "Mono10": 0x01100003,
    "Mono12": 0x01100005,
    "Mono16": 0x01100007,
    "RGB8": 0x02180014,
    "BGR8": 0x02180015,
    "BayerGR8": 0x01080008,
    "BayerRG8": 0x01080009,
    "BayerGB8": 0x0108000A,
    "BayerBG8": 0x0108000B,
}
PIXEL_FORMAT_NAMES: dict[int, str] = {code: name for name, code in PIXEL_FORMATS.items()}
# Significant bits of the unpacked mono formats (stored little-endian in 16 bits).
_MONO_BITS = {"Mono10": 10, "Mono12": 12, "Mono16": 16}
# Colour at (row % 2, col % 2) of each Bayer mosaic.
_BAYER = {"BayerRG8": "RGGB", "BayerGR8": "GRBG", "BayerGB8": "GBRG", "BayerBG8": "BGGR"}


def pixel_format_name(code: int) -> str:
    """The PFNC name of a code from a buffer, or its hex when the gateway does not know it."""
    return PIXEL_FORMAT_NAMES.get(code, f"0x{code:08x}")


def bytes_per_pixel(pixel_format: str) -> int:
    """Bytes one pixel takes in the raw buffer (PFNC bits-per-pixel field / 8)."""
    return ((PIXEL_FORMATS[pixel_format] >> 16) & 0xFF) // 8


def decode(data: bytes | bytearray | memoryview, width: int, height: int, pixel_format: str) -> np.ndarray:
    """The image in a raw buffer: HxW uint8 for mono formats (10/12/16 bits scaled to 8) and HxWx3
    uint8 RGB for colour and Bayer (bilinear demosaic), the two shapes inspection models take.

    ValueError when the format is unknown or the buffer is shorter than the image."""
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel format {pixel_format} is not decoded; decodable: {', '.join(PIXEL_FORMATS)}")
    need = width * height * bytes_per_pixel(pixel_format)
    if len(data) < need:
        raise ValueError(f"{pixel_format} {width}x{height} needs {need} bytes, the buffer has {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    if pixel_format == "Mono8":
        return raw.reshape(height, width).copy()
    if pixel_format in _MONO_BITS:
        wide = raw.view("<u2").reshape(height, width)
        return (wide >> (_MONO_BITS[pixel_format] - 8)).astype(np.uint8)
    if pixel_format == "RGB8":
        return raw.reshape(height, width, 3).copy()
    if pixel_format == "BGR8":
        return raw.reshape(height, width, 3)[:, :, ::-1].copy()
    return demosaic(raw.reshape(height, width), _BAYER[pixel_format])


def encode_raw(image: np.ndarray, pixel_format: str) -> bytes:
    """The raw buffer a camera sends for `image` (HxW or HxWx3 uint8) in `pixel_format`: what the
    fake cameras put on the wire. Grey images are replicated for colour formats and colour images
    reduced to luma (ITU-R 601, as PIL's "L") for mono ones."""
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel format {pixel_format} is not encodable; encodable: {', '.join(PIXEL_FORMATS)}")
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"image must be HxW or HxWx3 uint8, got {img.dtype} {img.shape}")
    if pixel_format in ("RGB8", "BGR8") or pixel_format in _BAYER:
        rgb = img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
        if pixel_format == "RGB8":
            return np.ascontiguousarray(rgb).tobytes()
        if pixel_format == "BGR8":
            return np.ascontiguousarray(rgb[:, :, ::-1]).tobytes()
        return mosaic(rgb, _BAYER[pixel_format]).tobytes()
    grey = img if img.ndim == 2 else np.asarray(Image.fromarray(img, "RGB").convert("L"))
    if pixel_format == "Mono8":
        return np.ascontiguousarray(grey).tobytes()
    wide = grey.astype("<u2") << (_MONO_BITS[pixel_format] - 8)
    return wide.tobytes()


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The HxW Bayer mosaic a sensor with colour filter `pattern` (e.g. "RGGB") records of `rgb`."""
    out = np.empty(rgb.shape[:2], dtype=np.uint8)
    for i, colour in enumerate(pattern):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(colour)]
    return out


def demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Bilinear demosaic of an HxW Bayer mosaic: each channel is the normalised 3x3 weighted mean
    of the samples of that colour around the pixel (recorded samples are kept as they are)."""
    h, w = raw.shape
    kernel = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    out = np.empty((h, w, 3), dtype=np.uint8)
    for c, colour in enumerate("RGB"):
        mask = np.zeros((h, w), dtype=np.float32)
        for i, cfa in enumerate(pattern):
            if cfa == colour:
                dy, dx = divmod(i, 2)
                mask[dy::2, dx::2] = 1.0
        vals = np.pad(raw.astype(np.float32) * mask, 1)
        weights = np.pad(mask, 1)
        num = np.zeros((h, w), dtype=np.float32)
        den = np.zeros((h, w), dtype=np.float32)
        for ky in range(3):
            for kx in range(3):
                num += kernel[ky, kx] * vals[ky : ky + h, kx : kx + w]
                den += kernel[ky, kx] * weights[ky : ky + h, kx : kx + w]
        plane = num / np.maximum(den, 1e-6)
        plane = np.where(mask > 0, raw, plane)
        out[:, :, c] = np.clip(np.rint(plane), 0, 255).astype(np.uint8)
    return out


def encode_frame(image: np.ndarray, features: CameraFeatures) -> tuple[bytes, str]:
    """The bytes a frame travels as on the broker and their content type: lossless PNG by default
    (what inspection was trained and validated on), or JPEG at the recipe's quality where the link
    needs it (`features.codec`, `features.jpeg_quality`)."""
    img = Image.fromarray(image, "L" if image.ndim == 2 else "RGB")
    if features.codec == "png":
        return encode_png(img), "image/png"
    if features.codec == "jpeg":
        return encode_jpeg(img, quality=features.jpeg_quality), "image/jpeg"
    raise ValueError(f"codec must be png or jpeg, got {features.codec}")
