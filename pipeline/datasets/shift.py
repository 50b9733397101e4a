"""A shifted copy of a dataset folder: another session's light level, focus and unit position.

Real lines drift between sessions: the lamp ages (light level), focus slips (slight blur), the
trigger timing moves units by a few pixels. `shift_dataset` writes a copy of a dataset folder
with those changes applied to every image, labels unchanged (same labels.csv rows, same
relative paths), so a model can be evaluated on the original and the shifted copy side by side.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pipeline.datasets.folder import LABELS_FILE, Row, load_dataset, write_dataset


@dataclass(frozen=True)
class Shift:
    """How images change: brightness factor, Gaussian blur sigma (px), max translation (px)."""

    brightness: float = 0.8
    blur: float = 1.0
    shift: int = 3
    seed: int = 0

    def check(self) -> None:
        if not 0.0 < self.brightness <= 4.0:
            raise ValueError(f"brightness must be in (0, 4], got {self.brightness}")
        if not 0.0 <= self.blur <= 10.0:
            raise ValueError(f"blur must be in [0, 10] px, got {self.blur}")
        if not 0 <= self.shift <= 64:
            raise ValueError(f"shift must be in [0, 64] px, got {self.shift}")


def shift_image(img: Image.Image, params: Shift, rng: np.random.Generator) -> Image.Image:
    """One image under the shifted conditions (same size and mode).

    Translation is a whole-pixel move by (dy, dx) drawn uniformly from [-shift, shift] (at least
    one of them non-zero when shift > 0); the uncovered border repeats the edge pixels.
    """
    mode = img.mode
    arr = np.asarray(img.convert("RGB") if mode not in ("L", "RGB") else img, dtype=np.float32)
    arr = arr * params.brightness
    out = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    if params.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(params.blur))
    if params.shift > 0:
        while True:
            dy, dx = (int(v) for v in rng.integers(-params.shift, params.shift + 1, size=2))
            if dy or dx:
                break
        a = np.asarray(out)
        pad = [(abs(dy), abs(dy)), (abs(dx), abs(dx))] + ([(0, 0)] if a.ndim == 3 else [])
        padded = np.pad(a, pad, mode="edge")
        h, w = a.shape[:2]
        y0, x0 = abs(dy) - dy, abs(dx) - dx
        out = Image.fromarray(np.ascontiguousarray(padded[y0 : y0 + h, x0 : x0 + w]))
    return out


def shift_dataset(src: Path, out: Path, params: Shift, product: str | None = None) -> Path:
    """Write the shifted copy of dataset folder `src` (validated first) into the new folder `out`.

    Image i (in labels.csv order) uses generator [seed, i]; PNG stays PNG, JPEG stays JPEG.
    Returns the path of the new labels.csv.
    """
    params.check()
    ds = load_dataset(src, product)  # DatasetError lists every bad row; nothing is written then
    out = Path(out).resolve()
    if out == ds.root or ds.root in out.parents:
        raise ValueError(f"output folder {out} must not be inside the source dataset {ds.root}")
    if (out / LABELS_FILE).exists():
        raise FileExistsError(f"{out / LABELS_FILE} exists: choose an empty folder for the shifted copy")
    rows: list[Row] = []
    for i, row in enumerate(ds.rows):
        rel = ds.relative(row)
        with Image.open(row.image) as img:
            fmt = img.format
            img.load()
            shifted = shift_image(img, params, np.random.default_rng([params.seed, i]))
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        if fmt == "JPEG":
            shifted.save(buf, format="JPEG", quality=95)
        else:
            shifted.save(buf, format="PNG")
        target.write_bytes(buf.getvalue())
        rows.append(Row(target, row.product, row.label, row.defect))
    return write_dataset(out, rows)
