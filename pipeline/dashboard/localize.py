"""Where on the unit the model saw the defect: occlusion sensitivity through the served model.

The classifiers output a defect score per image, not a location, and the model contract
(docs/models.md) must not change, so the location is asked of the model itself: hide one region
of the frame at a time and watch the defect score. When hiding a region makes the score drop,
the evidence for "defect" was there (occlusion sensitivity, Zeiler & Fergus 2014, "Visualizing
and Understanding Convolutional Networks"). It works with every released model version as
served, because it only needs ``score(images) -> [float]``.

A region is hidden by replacing it with a median-filtered copy of itself (window about 1/23
of the frame: 7 px at the 160 px model input). The median removes thin and small structures
(a crack, the edge of a chip, a speck) but keeps the unit's colour, brightness, edges and most
of its surface texture. Measured on rendered tablets with the trained tablet classifier: a
*blurred* or flat patch is itself a defect to the model (a smooth region on a textured tablet
raises the score in every cell), which buries the signal. The hottest cell held part of the
defect in 28 of 32 rendered rejects with the median (crack, chip, discoloration,
contamination; 4 seeds; as 160 px PNG and as the 128 px JPEG the alert service keeps), against
3 of 12 with a blur. Its limit: a defect spread over many cells (a long crack across the unit)
may leave no single cell with evidence of its own, and the map stays cold.

The scores of rejected units sit at 0.99..0.99999, where hiding part of a defect moves the
probability by 1e-6 but the log-odds by a clear amount, so the drop is measured in log-odds:
``drop[i, j] = max(0, logit(base) - logit(score with cell (i, j) hidden))`` and the heat map is
``drop / max(drop)`` (0 everywhere when no drop exceeds `MIN_DROP_LOGIT`, i.e. no cell carries
evidence of its own). All variants and the original travel in one batch (one Triton request of
grid*grid + 1 frames).

The dashboard computes this lazily per kept reject frame (`Localizer`): the first request for
a unit scores it, later ones come from a bounded cache.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ScoreBatch = Callable[[list[bytes]], list[float]]

DEFAULT_GRID = 6
# Log-odds drops below this are noise: the map stays cold rather than amplifying them.
MIN_DROP_LOGIT = 0.01
_EPS = 1e-7
# Written on an overlay whose map is cold (no one region carries the evidence).
COLD_LABEL = "no single region"


class LocalizeUnavailable(RuntimeError):
    """The model cannot be asked now (Triton unreachable, no such model); the text says why."""


def _encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _decode(image_bytes: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(image_bytes))
        img.load()
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, DecompressionBombError
        raise ValueError(f"not a readable image ({len(image_bytes)} bytes): {exc}") from None
    return img.convert("RGB")


def _edges(n: int, grid: int) -> list[int]:
    return [round(k * n / grid) for k in range(grid + 1)]


def median_size(w: int, h: int) -> int:
    """Odd median window for a frame of w x h: about 1/23 of the shorter side, at least 3."""
    return max(3, 2 * round(min(w, h) / 46) + 1)


def occlusion_variants(img: Image.Image, grid: int = DEFAULT_GRID) -> list[Image.Image]:
    """grid*grid copies of `img`, row-major, each with one cell replaced by its median-filtered
    self (fine defect detail gone, colour and texture kept)."""
    w, h = img.size
    xs, ys = _edges(w, grid), _edges(h, grid)
    filled = img.filter(ImageFilter.MedianFilter(median_size(w, h)))
    out = []
    for i in range(grid):
        for j in range(grid):
            box = (xs[j], ys[i], xs[j + 1], ys[i + 1])
            v = img.copy()
            v.paste(filled.crop(box), box[:2])
            out.append(v)
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def occlusion_map(image_bytes: bytes, score_batch: ScoreBatch, grid: int = DEFAULT_GRID
                  ) -> tuple[np.ndarray, float]:
    """(heat [grid, grid] in [0, 1], base score) of a PNG/JPEG frame; `score_batch` scores a
    list of PNG-encoded frames in one call (the original first, then the variants row-major)
    and answers defect scores in [0, 1]. ValueError for an unreadable frame or a scorer
    answering the wrong number of scores."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    img = _decode(image_bytes)
    frames = [_encode(img)] + [_encode(v) for v in occlusion_variants(img, grid)]
    scores = np.asarray([float(s) for s in score_batch(frames)], dtype=np.float64)
    if len(scores) != len(frames):
        raise ValueError(f"scorer answered {len(scores)} scores for {len(frames)} frames")
    base = float(scores[0])
    if not np.isfinite(base):
        return np.zeros((grid, grid)), base
    rest = np.nan_to_num(scores[1:], nan=base).reshape(grid, grid)
    drop = np.maximum(0.0, _logit(np.array(base)) - _logit(rest))
    peak = float(drop.max())
    if peak < MIN_DROP_LOGIT:
        return np.zeros((grid, grid)), base
    return drop / peak, base


def hottest_box(heat: np.ndarray, size: tuple[int, int], frac: float = 0.5) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1) around the cells at least `frac` of the hottest one; None when
    the map is cold."""
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0:
        return None
    rows, cols = np.nonzero(heat >= frac * peak)
    gh, gw = heat.shape
    xs, ys = _edges(size[0], gw), _edges(size[1], gh)
    return xs[cols.min()], ys[rows.min()], xs[cols.max() + 1], ys[rows.max() + 1]


def overlay_png(image_bytes: bytes, heat: np.ndarray, max_alpha: float = 0.6) -> bytes:
    """The frame with the heat map as a semi-transparent red layer (bilinear upsampling) and a
    box around the hottest region (a cold map: the label `COLD_LABEL` instead); PNG of the
    frame's own size."""
    img = _decode(image_bytes)
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    peak = float(heat.max()) if heat.size else 0.0
    norm = heat / peak if peak > 0 else heat
    # Upsample the cell grid: each value sits at its cell's centre, bilinear in between.
    small = Image.fromarray((norm * 255).astype(np.uint8), mode="L")
    alpha = small.resize(img.size, Image.Resampling.BILINEAR)
    alpha = alpha.point(lambda v: int(v * max_alpha))
    red = Image.new("RGB", img.size, (230, 20, 20))
    out = Image.composite(red, img, alpha)
    box = hottest_box(heat, img.size)
    draw = ImageDraw.Draw(out)
    if box is not None:
        x0, y0, x1, y1 = box
        width = max(1, min(img.size) // 80)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 230, 0), width=width)
    else:  # cold map: say so on the image rather than show an unmarked frame as "the location"
        left, top, right, bottom = draw.textbbox((3, 0), COLD_LABEL)
        y = img.size[1] - (bottom - top) - 6
        draw.rectangle((0, y - 2, right + 3, img.size[1]), fill=(30, 30, 30))
        draw.text((3, y - top), COLD_LABEL, fill=(255, 230, 0))
    return _encode(out)


class TritonScorer:
    """`score_batch` through a Triton inspection ensemble (synchronous gRPC client; call it from
    a worker thread). The SCORE output only: the model contract as served, every version."""

    def __init__(self, url: str, timeout_s: float = 10.0, max_batch: int = 64) -> None:
        self.url, self.timeout_s, self.max_batch = url, timeout_s, max_batch
        self._client: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        import tritonclient.grpc as grpcclient

        with self._lock:
            if self._client is None:
                self._client = grpcclient.InferenceServerClient(self.url)
            return self._client

    def for_model(self, model: str) -> ScoreBatch:
        def score(images: list[bytes]) -> list[float]:
            return self.score(model, images)

        return score

    def score(self, model: str, images: list[bytes]) -> list[float]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        from streams.triton_client import INPUT_NAME, SCORE_OUTPUT

        out: list[float] = []
        try:
            client = self._get()
            for k in range(0, len(images), self.max_batch):
                part = images[k:k + self.max_batch]
                batch = np.array(part, dtype=np.object_).reshape(len(part), 1)
                tensor = grpcclient.InferInput(INPUT_NAME, list(batch.shape), "BYTES")
                tensor.set_data_from_numpy(batch)
                resp = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(SCORE_OUTPUT)],
                                    client_timeout=self.timeout_s)
                scores = resp.as_numpy(SCORE_OUTPUT)
                if scores is None:
                    raise LocalizeUnavailable(f"model {model!r} returned no {SCORE_OUTPUT}")
                out.extend(float(s) for s in scores.reshape(len(part)))
        except InferenceServerException as exc:
            raise LocalizeUnavailable(f"Triton at {self.url} cannot score with {model!r}: "
                                      f"{exc.message() or exc}") from None
        except OSError as exc:
            raise LocalizeUnavailable(f"Triton at {self.url} is unreachable: {exc}") from None
        return out


class Localizer:
    """Heat-map overlays of kept reject frames, computed on first request, cached per unit (LRU,
    at most `cache_size`). `scorer_for(product) -> score_batch` picks the product's model;
    it and the returned scorer raise `LocalizeUnavailable` when the model cannot be asked.
    Blocking: call from a worker thread."""

    def __init__(self, scorer_for: Callable[[str], ScoreBatch], grid: int = DEFAULT_GRID,
                 cache_size: int = 64) -> None:
        self.scorer_for, self.grid, self.cache_size = scorer_for, grid, cache_size
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._unit_locks: dict[str, threading.Lock] = {}

    def cached(self, unit_id: str) -> bytes | None:
        with self._lock:
            png = self._cache.get(unit_id)
            if png is not None:
                self._cache.move_to_end(unit_id)
            return png

    def overlay(self, unit_id: str, product: str, image: bytes) -> bytes:
        """The overlay PNG of `unit_id` (one scoring per unit even under concurrent requests)."""
        png = self.cached(unit_id)
        if png is not None:
            return png
        with self._lock:
            unit_lock = self._unit_locks.setdefault(unit_id, threading.Lock())
        with unit_lock:
            png = self.cached(unit_id)
            if png is None:
                heat, _ = occlusion_map(image, self.scorer_for(product), self.grid)
                png = overlay_png(image, heat)
                with self._lock:
                    self._cache[unit_id] = png
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        with self._lock:
            self._unit_locks.pop(unit_id, None)
        return png


def triton_localizer(settings: Any, grid: int = DEFAULT_GRID) -> Localizer:
    """The stack's localizer: the product's inspection ensemble (`ensemble_for`) on the Triton
    the workers use (`TritonTarget.from_settings`: the configured URL or the embedded server)."""
    from pipeline.model.deploy import TritonTarget
    from pipeline.wire.messages import MessageError
    from streams.routing import ensemble_for

    scorer = TritonScorer(TritonTarget.from_settings(settings).url, timeout_s=settings.triton.request_timeout_s)
    models = settings.stream.product_models

    def scorer_for(product: str) -> ScoreBatch:
        try:
            return scorer.for_model(ensemble_for(product, models))
        except MessageError as exc:
            raise LocalizeUnavailable(str(exc)) from None

    return Localizer(scorer_for, grid)
