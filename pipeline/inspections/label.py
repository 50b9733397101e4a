"""Labels and cartons: read the GS1 DataMatrix (measurement) and check it against the batch (judge).

The reading runs in Triton (`triton_models/label_reader`): zxing-cpp finds and decodes the
code and the GS1 element string is parsed into flat values. An unreadable code is a
*measurement* (``decoded: false``), not a failed request: only a frame that is not an image
fails. The judge runs in the worker because the lot being run and today's date are the line's
context, not the model's, and a recipe change (the GTIN, the minimum shelf life) must never
need a model change.

Duplicate serials need the whole batch's history; `SerialTracker` is the small, bounded,
pure piece that keeps it (used by the alert service, which sees every result of a line).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import date, timedelta
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from pydantic import Field, field_validator

from pipeline.inspections.base import InspectionParams, Judgement, Measurement, Value
from pipeline.wire.gs1 import GS1_SYMBOLOGY_IDS, Gs1Error, normalize_gtin, parse_element_string

MAX_SHELF_LIFE_DAYS = 3660  # ten years: no medicine is labelled further ahead
# Further passes on upscaled (and once sharpened) frames catch codes whose modules are only
# 2.5-3 px after blur and skew: zxing-cpp samples module centres, interpolation puts them back on
# whole pixels. They run only when the previous pass found nothing, so good labels pay for one.
UPSCALE_RETRIES: tuple[tuple[float, Image.Resampling, bool], ...] = (
    (2.0, Image.Resampling.BICUBIC, False),
    (3.0, Image.Resampling.LANCZOS, False),
    (2.5, Image.Resampling.BICUBIC, True),
)


class LabelParams(InspectionParams):
    """The recipe's label section: which product the labels must carry and how much shelf life
    must be left on the day of packing."""

    gtin: str = Field(description="GTIN-8/12/13/14 of the product; stored as the GTIN-14 of AI (01)")
    min_remaining_shelf_life_days: int = Field(
        default=0, ge=0, le=MAX_SHELF_LIFE_DAYS, description="reject when expiry < today + this many days"
    )
    require_serial: bool = Field(default=True, description="a code without AI (21) is a reject")

    @field_validator("gtin", mode="before")
    @classmethod
    def _gtin14(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"gtin must be a string of digits (leading zeros matter), got {type(value).__name__}")
        try:
            return normalize_gtin(value.strip())
        except Gs1Error as exc:
            raise ValueError(str(exc)) from exc


def _grey(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = (arr[..., :3].astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.uint8)
    elif arr.ndim != 2:
        raise ValueError(f"frame must be HxW grey or HxWx3 RGB, got shape {arr.shape}")
    if min(arr.shape[:2]) < 16:
        raise ValueError(f"frame of {arr.shape[1]}x{arr.shape[0]} px is too small to hold a code")
    return np.ascontiguousarray(arr)


def _find_codes(grey: np.ndarray) -> list[Any]:
    import zxingcpp  # imported here: a worker that only judges never loads the reader

    fmt = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.DataMatrix)
    codes = zxingcpp.read_barcodes(grey, formats=fmt)
    h, w = grey.shape
    for scale, resample, sharpen in UPSCALE_RETRIES:
        if codes:
            break
        big = Image.fromarray(grey).resize((int(w * scale), int(h * scale)), resample)
        if sharpen:
            big = big.filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=0))
        codes = zxingcpp.read_barcodes(np.asarray(big), formats=fmt)
    return list(codes)


def read_label(rgb: np.ndarray, params: LabelParams, today: date | None = None) -> Measurement:
    """Find and decode the frame's DataMatrix and parse its GS1 data.

    values: ``decoded`` (a DataMatrix was decoded), ``codes`` (how many), ``symbology`` (``]d2``
    for GS1), ``gs1`` (bool), ``text`` (the element string, GS as ``\\x1d``), then ``gtin``,
    ``lot``, ``expiry`` (ISO date), ``serial`` when present, or ``parse_error``. `today` anchors
    the century of two-digit years (default: the system date). `params` is validated only:
    reading does not depend on the recipe.
    """
    if not isinstance(params, LabelParams):
        raise ValueError(f"params must be LabelParams, got {type(params).__name__}")
    codes = _find_codes(_grey(rgb))
    values: dict[str, Value] = {"decoded": bool(codes), "codes": len(codes), "symbology": "", "gs1": False, "text": ""}
    if not codes:
        return Measurement(values=values)
    # Several codes on one label: prefer a GS1 one (a second, plain code is artwork).
    code = next((c for c in codes if c.symbology_identifier in GS1_SYMBOLOGY_IDS), codes[0])
    gs1 = code.symbology_identifier in GS1_SYMBOLOGY_IDS
    text = bytes(code.bytes).decode("latin-1") if gs1 else code.text
    values.update(symbology=code.symbology_identifier, gs1=gs1, text=text)
    if not gs1:
        values["parse_error"] = f"DataMatrix is not GS1 (symbology {code.symbology_identifier}, no FNC1)"
        return Measurement(values=values)
    try:
        data = parse_element_string(text, today)
    except Gs1Error as exc:
        values["parse_error"] = str(exc)
        return Measurement(values=values)
    for key, val in (("gtin", data.gtin), ("lot", data.lot), ("serial", data.serial)):
        if val is not None:
            values[key] = val
    if data.expiry is not None:
        values["expiry"] = data.expiry.isoformat()
    return Measurement(values=values)


def read_label_frame(rgb: np.ndarray, params: LabelParams, today: date | None = None) -> Measurement:
    """The `label_reader` model's per-frame work on a decoded RGB frame: grey by PIL's ITU-R 601
    luma (rounded, as the camera's mono mode) first, then `read_label`."""
    return read_label(np.asarray(Image.fromarray(rgb).convert("L")), params, today)


def judge_label(m: Measurement, params: LabelParams, lot: str, today: date) -> Judgement:
    """The recipe's decision on one read label against the batch `lot` being run.

    Checks in order (the first failing one is the defect; every failing one is a reason):
    ``unreadable`` (no code, not GS1, invalid GS1 data, or no serial when the recipe requires
    one), ``wrong-gtin`` (also: no GTIN), ``wrong-lot`` (also: no lot), ``expired`` (expiry
    before today + the minimum shelf life; also: no expiry, since shelf life cannot be shown).
    The serial goes into ``flags["serial"]`` for the batch's duplicate check.
    """
    if not isinstance(lot, str) or not lot.strip():
        raise ValueError("the batch lot must be a non-empty string")
    if not isinstance(today, date):
        raise ValueError(f"today must be a date, got {type(today).__name__}")
    v = m.values
    reasons: list[tuple[str, str]] = []
    measurements: dict[str, Value] = {"decoded": bool(v.get("decoded", False))}
    for key in ("gtin", "lot", "expiry", "serial"):
        if key in v:
            measurements[key] = v[key]
    flags: dict[str, str] = {}

    if not v.get("decoded"):
        reasons.append(("unreadable", "no DataMatrix could be decoded"))
    elif not v.get("gs1"):
        reasons.append(("unreadable", str(v.get("parse_error") or f"DataMatrix is not GS1 ({v.get('symbology')})")))
    elif "parse_error" in v:
        reasons.append(("unreadable", f"GS1 data invalid: {v['parse_error']}"))
    else:
        serial = v.get("serial")
        if serial is not None:
            flags["serial"] = str(serial)
        elif params.require_serial:
            reasons.append(("unreadable", "code carries no serial number (21); the recipe requires one"))
        gtin = v.get("gtin")
        if gtin is None:
            reasons.append(("wrong-gtin", f"code carries no GTIN (01); expected {params.gtin}"))
        elif gtin != params.gtin:
            reasons.append(("wrong-gtin", f"GTIN {gtin} is not the recipe's {params.gtin}"))
        code_lot = v.get("lot")
        if code_lot is None:
            reasons.append(("wrong-lot", f"code carries no lot (10); batch is {lot}"))
        elif code_lot != lot:
            reasons.append(("wrong-lot", f"lot {code_lot} is not the batch's {lot}"))
        reasons.extend(_expiry_reasons(v.get("expiry"), params, today, measurements))
    if not reasons:
        return Judgement("pass", "none", measurements=measurements, flags=flags)
    return Judgement(
        "reject", reasons[0][0], reasons=[text for _, text in reasons], measurements=measurements, flags=flags
    )


def _expiry_reasons(
    expiry: Value | None, params: LabelParams, today: date, measurements: dict[str, Value]
) -> list[tuple[str, str]]:
    if expiry is None:
        return [("expired", "code carries no expiry date (17): shelf life cannot be shown")]
    try:
        when = date.fromisoformat(str(expiry))
    except ValueError:
        return [("expired", f"expiry {expiry!r} is not an ISO date")]
    remaining = (when - today).days
    measurements["remaining_shelf_life_days"] = remaining
    limit = today + timedelta(days=params.min_remaining_shelf_life_days)
    if when < limit:
        if remaining < 0:
            return [("expired", f"expired on {when.isoformat()} ({-remaining} days ago)")]
        return [(
            "expired",
            f"expiry {when.isoformat()} leaves {remaining} days of shelf life; "
            f"the recipe requires {params.min_remaining_shelf_life_days}",
        )]
    return []


class SerialTracker:
    """Serials seen per (line, lot): `seen` answers whether one came before.

    Memory is bounded: at most `max_per_lot` serials are kept per lot (the oldest are dropped
    first, so a repeat further back than that goes unnoticed) and at most `max_lots` lots (the
    least recently used is dropped: a line runs one lot at a time, a few may interleave).
    Not thread-safe: one tracker per worker task.
    """

    def __init__(self, max_per_lot: int = 500_000, max_lots: int = 16) -> None:
        if max_per_lot < 1 or max_lots < 1:
            raise ValueError("max_per_lot and max_lots must be >= 1")
        self.max_per_lot = max_per_lot
        self.max_lots = max_lots
        self._lots: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()

    def seen(self, line: str, lot: str, serial: str) -> bool:
        """True when `serial` was already seen on `line` in `lot`; records it either way."""
        return self.first_unit(line, lot, serial) is not None

    def first_unit(self, line: str, lot: str, serial: str, unit: str = "") -> str | None:
        """The unit that first carried `serial` on `line` in `lot` ("" if unnamed), or None when
        this is its first appearance (or the same `unit` again: a redelivered result)."""
        if not serial:
            raise ValueError("serial must be a non-empty string")
        key = (line, lot)
        serials = self._lots.get(key)
        if serials is None:
            serials = self._lots[key] = {}
            while len(self._lots) > self.max_lots:
                self._lots.popitem(last=False)
        else:
            self._lots.move_to_end(key)
        if serial in serials:
            first = serials[serial]
            return None if unit and first == unit else first
        serials[serial] = unit
        if len(serials) > self.max_per_lot:
            del serials[next(iter(serials))]
        return None

    def count(self, line: str, lot: str) -> int:
        """How many serials are remembered for (line, lot)."""
        return len(self._lots.get((line, lot), ()))

    def forget(self, line: str, lot: str) -> None:
        """Drop a finished lot's serials."""
        self._lots.pop((line, lot), None)
