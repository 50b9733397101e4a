"""Renderer of printed carton labels with a GS1 DataMatrix, as the line's label camera sees them.

Why a renderer: the simulated line, the tests and the accuracy benchmark need labels whose
printed data is known exactly. The printed content (GTIN, expiry, lot, serial) is the ground
truth; the nuisances of a real print-and-apply station vary per frame (label position and skew,
paper shade, ink density and dot gain, lighting level and gradient, focus blur, sensor noise)
so a reader that passes the benchmark must cope with them.

Defects are of two sorts. Data defects (`wrong-gtin`, `wrong-lot`, `expired`,
`duplicate-serial`) print a perfectly readable code with the wrong data, so they are a matter of
*content*. `unreadable` damages the print itself (smudge, scratch, faded ink, print-head
dropout) beyond what the code's error correction recovers.

A render is a pure function of the generator state: same seed, same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.imaging.raster import (
    gaussian_blur,
    illumination,
    line_profile,
    polyline_distance,
    sensor_noise,
    smooth_noise,
    smoothstep,
)
from pipeline.imaging.tablets import draw_unit
from pipeline.wire.gs1 import encode_date, encode_hri, gtin_check_digit, normalize_gtin

LABEL_DEFECTS: tuple[str, ...] = ("unreadable", "wrong-gtin", "wrong-lot", "expired", "duplicate-serial")
DAMAGES: tuple[str, ...] = ("smudge", "scratch", "faded", "dropout")
# How far back a duplicated serial reaches (units of the same batch).
DUPLICATE_WINDOW = 20
_SERIAL_MULTIPLIER = 982_451_653  # coprime with 10: seq -> serial is a bijection mod 10**12
_SERIAL_OFFSET = 271_828_182_845
_RULE_Y = 46  # the printed rule under the product name
# Fraction of full ink density left on a faded code, by `subtle`: zxing-cpp still reads some
# codes at 9 % of full contrast, so a faded defect is fainter than 7 %.
_FADED_CONTRAST = {True: (0.045, 0.07), False: (0.0, 0.03)}


@dataclass(frozen=True)
class LabelSpec:
    """One labelled product: what its label says and how it is printed. Sizes are in frame
    pixels at the camera's nominal distance; the frame adds a margin of carton around the label."""

    product_id: str
    gtin: str
    product_name: str
    strength: str
    label_size: tuple[int, int]  # (width, height) px
    module_px: float  # DataMatrix module (cell) size
    margin: int = 20

    @property
    def frame_size(self) -> tuple[int, int]:
        w, h = self.label_size
        return w + 2 * self.margin, h + 2 * self.margin


LABEL_PRODUCTS: dict[str, LabelSpec] = {
    "carton-label-gs1": LabelSpec(
        product_id="carton-label-gs1",
        gtin="09506000134352",
        product_name="Paracetamol 500 mg",
        strength="20 film-coated tablets",
        label_size=(280, 150),
        module_px=3.0,
    ),
    # A smaller folding carton: the same data in a denser code (2.5 px modules).
    "small-carton-gs1": LabelSpec(
        product_id="small-carton-gs1",
        gtin="09506000134475",
        product_name="Amoxicillin 250 mg",
        strength="12 capsules",
        label_size=(240, 130),
        module_px=2.5,
        margin=16,
    ),
}


@dataclass(frozen=True)
class LabelContent:
    """What the printer puts on one label (text and code). `expiry_day00` prints the expiry as
    YYMM00 (valid to the end of the month), which `expiry` then is."""

    gtin: str
    lot: str
    expiry: date
    serial: str
    expiry_day00: bool = False

    def hri(self) -> str:
        """The code's data in '(01)...(17)...(10)...(21)...' form (zxing-cpp's GS1 writer input)."""
        return encode_hri(
            [("01", self.gtin), ("17", encode_date(self.expiry, self.expiry_day00)), ("10", self.lot), ("21", self.serial)]
        )


@dataclass(frozen=True)
class LabelTruth:
    """Ground truth of one sampled label: its printed content, the damage drawn on it (None for
    a data defect or a good label), and for `duplicate-serial` the seq whose serial it repeats."""

    content: LabelContent
    subtle: bool = False
    damage: str | None = None
    duplicate_of: int | None = None

    @property
    def gtin(self) -> str:
        return self.content.gtin

    @property
    def lot(self) -> str:
        return self.content.lot

    @property
    def expiry(self) -> date:
        return self.content.expiry

    @property
    def serial(self) -> str:
        return self.content.serial


def get_label_spec(product: str) -> LabelSpec:
    """The spec of `product`; ValueError naming the known label products."""
    if product not in LABEL_PRODUCTS:
        raise ValueError(f"unknown label product {product!r}; known: {', '.join(sorted(LABEL_PRODUCTS))}")
    return LABEL_PRODUCTS[product]


def serial_for(seq: int) -> str:
    """The serial number printed on unit `seq` of a batch: 12 digits that look random but are
    unique for every seq < 10**12 (an affine bijection), as serialisation requires."""
    if not isinstance(seq, (int, np.integer)) or not 0 <= seq < 10**12:
        raise ValueError(f"seq must be an integer in [0, 10**12), got {seq!r}")
    return f"{(int(seq) * _SERIAL_MULTIPLIER + _SERIAL_OFFSET) % 10**12:012d}"


# --------------------------------------------------------------------------- sampling


def sample_label(
    rng: np.random.Generator,
    product: str,
    defect_rate: float,
    lot: str,
    seq: int,
    today: date,
    subtle_fraction: float = 0.33,
) -> tuple[Image.Image, str | None, LabelTruth]:
    """Draw unit `seq` of batch `lot` as the line prints it: defective with `defect_rate`
    (class uniform over `LABEL_DEFECTS`; unit 0 has no earlier serial to repeat, so it never
    gets `duplicate-serial`). Returns the frame, the defect (None = good) and the truth."""
    spec = get_label_spec(product)
    choices = LABEL_DEFECTS if seq > 0 else tuple(d for d in LABEL_DEFECTS if d != "duplicate-serial")
    defect, subtle = draw_unit(rng, defect_rate, subtle_fraction, choices)
    expiry = today + timedelta(days=int(rng.integers(365, 3 * 365)))
    content = LabelContent(spec.gtin, lot, expiry, serial_for(seq), expiry_day00=bool(rng.random() < 0.3))
    duplicate_of: int | None = None
    if defect == "wrong-gtin":
        content = replace(content, gtin=_other_gtin(rng, spec.gtin, subtle))
    elif defect == "wrong-lot":
        content = replace(content, lot=_other_lot(rng, lot, subtle))
    elif defect == "expired":
        days_ago = int(rng.integers(1, 31)) if subtle else int(rng.integers(60, 900))
        content = replace(content, expiry=today - timedelta(days=days_ago), expiry_day00=False)
    elif defect == "duplicate-serial":
        duplicate_of = seq - int(rng.integers(1, min(seq, DUPLICATE_WINDOW) + 1))
        content = replace(content, serial=serial_for(duplicate_of))
    if content.expiry_day00:  # the printed YYMM00 means the month's last day
        nxt = (content.expiry.replace(day=28) + timedelta(days=4)).replace(day=1)
        content = replace(content, expiry=nxt - timedelta(days=1))
    damage = DAMAGES[int(rng.integers(len(DAMAGES)))] if defect == "unreadable" else None
    img = _render(rng, spec, content, damage, subtle)
    return img, defect, LabelTruth(content, subtle, damage, duplicate_of)


def _other_gtin(rng: np.random.Generator, gtin: str, subtle: bool) -> str:
    """A valid GTIN-14 that is not `gtin`: one item-reference digit off (a neighbouring product
    of the same company) or an unrelated one."""
    body = list(normalize_gtin(gtin)[:-1])
    if subtle:
        i = int(rng.integers(9, 13))
        body[i] = str((int(body[i]) + int(rng.integers(1, 10))) % 10)
    else:
        body = ["0"] + [str(d) for d in rng.integers(0, 10, 12)]
    text = "".join(body)
    out = text + str(gtin_check_digit(text))
    return out if out != normalize_gtin(gtin) else _other_gtin(rng, gtin, False)


def _other_lot(rng: np.random.Generator, lot: str, subtle: bool) -> str:
    """A lot that is not `lot`: one character changed (a mix-up with the neighbouring batch) or
    another batch's lot altogether."""
    if subtle:
        digits = [i for i, c in enumerate(lot) if c.isdigit()]
        if digits:
            i = digits[int(rng.integers(len(digits)))]
            changed = lot[:i] + str((int(lot[i]) + int(rng.integers(1, 10))) % 10) + lot[i + 1 :]
        else:
            changed = lot[:-1] + ("A" if lot[-1] != "A" else "B")
    else:
        changed = "L" + "".join(str(d) for d in rng.integers(0, 10, 6))
    return changed if changed != lot else changed + "X"


# --------------------------------------------------------------------------- rendering


def render_label(
    rng: np.random.Generator, product: str, content: LabelContent, defect_damage: bool, subtle: bool = False
) -> Image.Image:
    """Render one label of `product` printing `content` (RGB frame, `LabelSpec.frame_size`).
    `defect_damage` damages the code beyond reading (kind drawn at random); data defects are a
    matter of `content`."""
    spec = get_label_spec(product)
    damage = DAMAGES[int(rng.integers(len(DAMAGES)))] if defect_damage else None
    return _render(rng, spec, content, damage, subtle)


def _render(
    rng: np.random.Generator, spec: LabelSpec, content: LabelContent, damage: str | None, subtle: bool
) -> Image.Image:
    """Print the label (text, code, damage), apply it to the carton, then light, focus and
    sense the scene as the camera does."""
    lw, lh = spec.label_size
    fw, fh = spec.frame_size
    text_ink = _text_coverage(spec, content)
    code_ink, (cx0, cy0, cx1, cy1) = _code_coverage(rng, spec, content)
    contrast = 1.0
    if damage == "faded":  # thermal ribbon running out: the code prints faint
        contrast = rng.uniform(*_FADED_CONTRAST[subtle])
    elif damage is not None:
        _damage_code(rng, code_ink, (cx0, cy0, cx1, cy1), spec.module_px, damage, subtle)

    # Paper reflectance with fibre texture; ink darkness varies with print density.
    paper = np.asarray([0.93, 0.92, 0.88], dtype=np.float32) * rng.uniform(0.9, 1.0)
    texture = 1.0 + 0.012 * smooth_noise(rng, (lh, lw), 3.0) + 0.01 * smooth_noise(rng, (lh, lw), 25.0)
    ink_level = rng.uniform(0.04, 0.16)
    ink = np.asarray([ink_level, ink_level, ink_level * 1.15], dtype=np.float32)
    code_ink = code_ink * contrast
    cover = np.maximum(text_ink, code_ink)[..., None]
    label = paper * texture[..., None] * (1.0 - cover) + ink * cover

    frame = _carton(rng, (fh, fw))
    frame = _place(rng, frame, label, spec.margin)
    light = illumination(rng, (fh, fw), gradient=(0.04, 0.25), vignetting=(0.05, 0.3))
    frame *= light[..., None] * rng.uniform(0.75, 1.05)
    frame = gaussian_blur(frame, rng.uniform(0.3, 0.85))
    frame = sensor_noise(rng, frame, gain=(1.5e-4, 5.0e-4), read=(0.003, 0.01))
    pixels = np.round(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_coverage(spec: LabelSpec, content: LabelContent) -> np.ndarray:
    """Ink coverage (0..1) of the printed text: product, strength and the human-readable data
    (the data lines come from the same content as the code, as on a real print-and-apply line)."""
    lw, lh = spec.label_size
    img = Image.new("L", (lw, lh), 0)
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), spec.product_name, fill=255, font=_font(15))
    draw.text((10, 28), spec.strength, fill=255, font=_font(11))
    expiry = content.expiry.strftime("%m/%Y") if content.expiry_day00 else content.expiry.isoformat()
    lines = (f"GTIN {content.gtin}", f"LOT {content.lot}", f"EXP {expiry}", f"SN {content.serial}")
    for i, line in enumerate(lines):
        draw.text((10, _RULE_Y + 8 + 17 * i), line, fill=255, font=_font(12))
    draw.line((8, _RULE_Y, lw - 8, _RULE_Y), fill=255, width=1)
    return np.asarray(img, dtype=np.float32) / 255.0


def _code_coverage(
    rng: np.random.Generator, spec: LabelSpec, content: LabelContent
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Ink coverage of the DataMatrix with dot gain or loss, and its box (x0, y0, x1, y1)."""
    import zxingcpp  # the renderer only: the worker's judge never needs the barcode library

    lw, lh = spec.label_size
    # Square symbols, as GS1 recommends for healthcare packs (zxing would otherwise pick a long
    # rectangular DMRE symbol for some contents, which does not fit the label's code area).
    symbol = zxingcpp.create_barcode(content.hri(), zxingcpp.BarcodeFormat.DataMatrix, gs1=True, force_square=True)
    modules = np.asarray(symbol.to_image(scale=1, add_quiet_zones=False), dtype=np.float32) < 128
    rows, cols = modules.shape
    side_w, side_h = int(round(cols * spec.module_px)), int(round(rows * spec.module_px))
    up = Image.fromarray(modules.astype(np.uint8) * 255, mode="L").resize((side_w, side_h), Image.Resampling.NEAREST)
    cell = np.asarray(up, dtype=np.float32) / 255.0
    # Dot gain (fat modules) or loss (thin): blur the ideal print and threshold it off-centre.
    # sigma 0.3 module moves each edge by up to ~0.1 module and keeps lone modules whole.
    soft = gaussian_blur(cell, 0.3 * spec.module_px)
    level = rng.uniform(0.35, 0.65)
    cell = smoothstep(level - 0.12, level + 0.12, soft)
    cell *= 1.0 - 0.08 * np.clip(smooth_noise(rng, cell.shape, 2.0), 0.0, None)  # uneven ink
    # Below the rule, at least 3 modules of quiet zone from the rule and the label's edges.
    quiet = int(np.ceil(3 * spec.module_px))
    x0 = lw - side_w - quiet - 4
    y0 = _RULE_Y + 1 + quiet + max(0, (lh - _RULE_Y - 1 - 2 * quiet - side_h) // 2)
    if y0 + side_h > lh - quiet or x0 < lw // 2:
        raise ValueError(f"{spec.product_id}: a {cols}x{rows} code of {spec.module_px} px modules does not fit the label")
    cover = np.zeros((lh, lw), dtype=np.float32)
    cover[y0 : y0 + side_h, x0 : x0 + side_w] = cell
    return cover, (x0, y0, x0 + side_w, y0 + side_h)


def _damage_code(
    rng: np.random.Generator,
    cover: np.ndarray,
    box: tuple[int, int, int, int],
    module_px: float,
    damage: str,
    subtle: bool,
) -> None:
    """Damage the code's ink coverage in place, well past its error correction."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    region = cover[y0:y1, x0:x1]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if damage == "smudge":  # wet ink smeared across the symbol by a guide rail or a thumb
        frac = rng.uniform(0.45, 0.6) if subtle else rng.uniform(0.7, 1.0)
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        rx, ry = frac * w * rng.uniform(0.55, 0.75), frac * h * rng.uniform(0.55, 0.75)
        edge = 1.0 + 0.25 * smooth_noise(rng, (h, w), 6.0)
        d = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2) / edge
        # Dense enough that the modules beneath keep < 6 % contrast: a reader sees through thinner
        # smears, and then the label is not unreadable.
        density = np.clip(rng.uniform(0.95, 1.0) + 0.03 * smooth_noise(rng, (h, w), 3.0), 0.94, 1.0)
        region[:] = np.maximum(region, (1.0 - smoothstep(0.85, 1.1, d)) * density)
    elif damage == "scratch":  # abrasion: bands of ink rubbed off across the symbol
        n = int(rng.integers(2, 4)) if subtle else int(rng.integers(4, 7))
        for _ in range(n):
            heading = rng.uniform(-0.6, 0.6) + (0.0 if rng.random() < 0.5 else np.pi / 2)
            cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
            reach = np.hypot(w, h)
            dx, dy = np.cos(heading) * reach, np.sin(heading) * reach
            pts = np.asarray([[cx - dx, cy - dy], [cx + dx, cy + dy]], dtype=np.float32)
            width = module_px * (rng.uniform(1.2, 1.8) if subtle else rng.uniform(1.8, 3.0))
            region *= 1.0 - line_profile(polyline_distance(xs, ys, pts), width)
    elif damage == "dropout":  # blocked print-head nozzles: blank stripes along the print direction
        n = int(rng.integers(3, 5)) if subtle else int(rng.integers(5, 9))
        for x in rng.uniform(0.05, 0.95, n) * w:
            width = module_px * rng.uniform(0.8, 1.4)
            region *= 1.0 - line_profile(np.abs(xs - x), width)
    else:
        raise ValueError(f"unknown damage {damage!r}; known: {', '.join(DAMAGES)}")


def _carton(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """The carton around the label: white board or brown corrugated, with print texture."""
    if rng.random() < 0.5:
        color = np.asarray([0.86, 0.86, 0.84], dtype=np.float32)
    else:
        color = np.asarray([0.62, 0.48, 0.33], dtype=np.float32)
    color = color * rng.uniform(0.85, 1.05)
    texture = 1.0 + 0.03 * smooth_noise(rng, shape, 12.0) + 0.015 * smooth_noise(rng, shape, 2.0)
    return (color * texture[..., None]).astype(np.float32)


def _place(rng: np.random.Generator, frame: np.ndarray, label: np.ndarray, margin: int) -> np.ndarray:
    """Paste `label` into `frame` rotated by a few degrees and shifted by a few pixels (the
    applicator's tolerance), with a faint shadow along its edge."""
    angle = rng.uniform(-3.0, 3.0)
    # One 8-bit RGBA rotation (quantisation is far below the sensor noise added later).
    rgba = np.empty((*label.shape[:2], 4), dtype=np.uint8)
    rgba[..., :3] = np.round(np.clip(label, 0.0, 1.0) * 255.0)
    rgba[..., 3] = 255
    turned = np.asarray(Image.fromarray(rgba, mode="RGBA").rotate(angle, resample=Image.Resampling.BICUBIC, expand=True))
    alpha = turned[..., 3].astype(np.float32) / 255.0
    rgb = turned[..., :3].astype(np.float32) / 255.0
    th, tw = alpha.shape
    fh, fw = frame.shape[:2]
    jitter = min(6, margin // 2)
    oy = (fh - th) // 2 + int(rng.integers(-jitter, jitter + 1))
    ox = (fw - tw) // 2 + int(rng.integers(-jitter, jitter + 1))
    # Clip to the frame (a rotated label may overhang a thin margin).
    sy0, sx0 = max(0, -oy), max(0, -ox)
    dy0, dx0 = max(0, oy), max(0, ox)
    hh, ww = min(th - sy0, fh - dy0), min(tw - sx0, fw - dx0)
    shadow = np.zeros((fh, fw), dtype=np.float32)
    shadow[dy0 : dy0 + hh, dx0 : dx0 + ww] = alpha[sy0 : sy0 + hh, sx0 : sx0 + ww]
    shadow = gaussian_blur(np.roll(shadow, (1, 1), axis=(0, 1)), 1.5)
    out = frame * (1.0 - 0.25 * shadow)[..., None]
    a = alpha[sy0 : sy0 + hh, sx0 : sx0 + ww, None]
    sub = out[dy0 : dy0 + hh, dx0 : dx0 + ww]
    out[dy0 : dy0 + hh, dx0 : dx0 + ww] = sub * (1.0 - a) + rgb[sy0 : sy0 + hh, sx0 : sx0 + ww] * a
    return out
