"""GS1 element strings: parse what a scanner decodes, encode what the simulated printer prints.

A GS1 DataMatrix carries an *element string*: application identifiers (AIs) each followed by
their data, with a GS (0x1D, FNC1 in the symbol) after every variable-length field that is not
last. Scanners may prefix the symbology identifier (``]d2`` for GS1 DataMatrix) and people
write the same data as ``(01)09506000134352(17)271231(10)AB12(21)X1``. All three forms parse
to one `Gs1Data`; anything that does not follow the GS1 General Specifications is a `Gs1Error`
that names the AI and what is wrong, because a reject must say why.

Only the AIs a pharmaceutical pack carries (and a few neighbours) are in the table: an unknown
AI cannot be parsed safely (its length is unknown), so it is an error rather than a guess.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

GS = "\x1d"
# Symbology identifiers whose data is a GS1 element string (ISO/IEC 15424 modifiers).
GS1_SYMBOLOGY_IDS: frozenset[str] = frozenset({"]d2", "]C1", "]Q3", "]e0", "]J1"})
# GS1 AI encodable character set 82 (General Specifications 7.11, figure 7.11-1).
_CSET82 = re.compile(r"[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]*")
_HRI_AI = re.compile(r"\((\d{2,4})\)")

Kind = Literal["numeric", "alnum", "date"]


@dataclass(frozen=True)
class AiSpec:
    """One AI: its data title, kind, length (exact when `fixed`, else the maximum) and whether
    the last digit is a GS1 mod-10 check digit."""

    title: str
    kind: Kind
    length: int
    fixed: bool
    check_digit: bool = False


AI_TABLE: dict[str, AiSpec] = {
    "00": AiSpec("SSCC", "numeric", 18, True, check_digit=True),
    "01": AiSpec("GTIN", "numeric", 14, True, check_digit=True),
    "02": AiSpec("CONTENT", "numeric", 14, True, check_digit=True),
    "10": AiSpec("BATCH/LOT", "alnum", 20, False),
    "11": AiSpec("PROD DATE", "date", 6, True),
    "12": AiSpec("DUE DATE", "date", 6, True),
    "13": AiSpec("PACK DATE", "date", 6, True),
    "15": AiSpec("BEST BEFORE", "date", 6, True),
    "16": AiSpec("SELL BY", "date", 6, True),
    "17": AiSpec("USE BY / EXPIRY", "date", 6, True),
    "20": AiSpec("VARIANT", "numeric", 2, True),
    "21": AiSpec("SERIAL", "alnum", 20, False),
    "22": AiSpec("CPV", "alnum", 20, False),
    "30": AiSpec("VAR. COUNT", "numeric", 8, False),
    "37": AiSpec("COUNT", "numeric", 8, False),
    "240": AiSpec("ADDITIONAL ID", "alnum", 30, False),
    "241": AiSpec("CUST. PART No.", "alnum", 30, False),
    "250": AiSpec("SECONDARY SERIAL", "alnum", 30, False),
    "400": AiSpec("ORDER NUMBER", "alnum", 30, False),
    "710": AiSpec("NHRN PZN", "alnum", 20, False),
    "711": AiSpec("NHRN CIP", "alnum", 20, False),
    "712": AiSpec("NHRN CN", "alnum", 20, False),
    "713": AiSpec("NHRN DRN", "alnum", 20, False),
    "714": AiSpec("NHRN AIM", "alnum", 20, False),
    "7003": AiSpec("EXPIRY TIME", "numeric", 10, True),
}
# AIs whose length is predefined by their first two digits (General Specifications figure
# 7.8.5-2): these never need a GS after them. Any other fixed-length AI (7003) must be
# terminated like a variable one when something follows.
_PREDEFINED_PREFIXES = frozenset(
    {"00", "01", "02", "03", "04", "11", "12", "13", "14", "15", "16", "17", "18", "19", "20", "23",
     "31", "32", "33", "34", "35", "36", "41"}
)


class Gs1Error(ValueError):
    """A GS1 element string (or a GTIN) that breaks the GS1 rules; the message says how."""


@dataclass(frozen=True)
class Gs1Data:
    """The parsed element string. `expiry` is the (17) date with day 00 resolved to the last day
    of its month; `other` keeps every further AI's raw data by AI."""

    gtin: str | None = None
    lot: str | None = None
    expiry: date | None = None
    serial: str | None = None
    other: dict[str, str] = field(default_factory=dict)


def gtin_check_digit(body: str) -> int:
    """GS1 mod-10 check digit of `body` (all digits before the check digit; weights 3,1,3,...
    from the right), as used by GTIN-8/12/13/14, SSCC and GLN."""
    if not body.isdigit() or not body.isascii():
        raise Gs1Error(f"check digit needs digits only, got {body!r}")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def normalize_gtin(gtin: str) -> str:
    """A GTIN-8/12/13/14 as the GTIN-14 that AI (01) carries (left-padded with zeros), after
    checking its digits and check digit."""
    if not isinstance(gtin, str) or not gtin.isascii() or not gtin.isdigit() or len(gtin) not in (8, 12, 13, 14):
        raise Gs1Error(f"a GTIN has 8, 12, 13 or 14 digits, got {gtin!r}")
    padded = gtin.zfill(14)
    expected = gtin_check_digit(padded[:-1])
    if int(padded[-1]) != expected:
        raise Gs1Error(f"GTIN {gtin} has check digit {padded[-1]}, expected {expected}")
    return padded


def decode_date(yymmdd: str, today: date | None = None, ai: str = "17") -> date:
    """YYMMDD -> date. Day 00 means the last day of the month; the century is the one that puts
    the year within -49..+50 years of `today` (General Specifications 7.12)."""
    if len(yymmdd) != 6 or not yymmdd.isascii() or not yymmdd.isdigit():
        raise Gs1Error(f"AI ({ai}) date must be 6 digits YYMMDD, got {yymmdd!r}")
    yy, mm, dd = int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:])
    ref = today or date.today()
    century = ref.year - ref.year % 100
    diff = yy - ref.year % 100
    if diff >= 51:
        century -= 100
    elif diff <= -50:
        century += 100
    year = century + yy
    if not 1 <= mm <= 12:
        raise Gs1Error(f"AI ({ai}) date {yymmdd}: month {mm:02d} is not 01..12")
    last = calendar.monthrange(year, mm)[1]
    if dd == 0:
        return date(year, mm, last)
    if dd > last:
        raise Gs1Error(f"AI ({ai}) date {yymmdd}: day {dd:02d} does not exist in {year}-{mm:02d}")
    return date(year, mm, dd)


def encode_date(value: date, end_of_month: bool = False) -> str:
    """date -> YYMMDD; `end_of_month` writes day 00 (valid to the month's last day)."""
    return f"{value.year % 100:02d}{value.month:02d}{0 if end_of_month else value.day:02d}"


def _check_value(ai: str, spec: AiSpec, value: str, today: date | None) -> None:
    if spec.fixed and len(value) != spec.length:
        raise Gs1Error(f"AI ({ai}) {spec.title} must be {spec.length} characters, got {len(value)} ({value!r})")
    if not spec.fixed and not 1 <= len(value) <= spec.length:
        raise Gs1Error(f"AI ({ai}) {spec.title} must be 1..{spec.length} characters, got {len(value)} ({value!r})")
    if spec.kind in ("numeric", "date") and not (value.isascii() and value.isdigit()):
        raise Gs1Error(f"AI ({ai}) {spec.title} must be digits only, got {value!r}")
    if spec.kind == "alnum" and not _CSET82.fullmatch(value):
        bad = next(c for c in value if not _CSET82.fullmatch(c))
        raise Gs1Error(f"AI ({ai}) {spec.title} has character {bad!r} outside GS1 character set 82")
    if spec.check_digit:
        expected = gtin_check_digit(value[:-1])
        if int(value[-1]) != expected:
            raise Gs1Error(f"AI ({ai}) {spec.title} {value} has check digit {value[-1]}, expected {expected}")
    if spec.kind == "date":
        decode_date(value, today, ai)


def _match_ai(text: str, pos: int) -> tuple[str, AiSpec]:
    for n in (2, 3, 4):
        ai = text[pos : pos + n]
        if ai in AI_TABLE:
            return ai, AI_TABLE[ai]
    shown = text[pos : pos + 4]
    raise Gs1Error(f"unknown or unsupported application identifier at position {pos}: {shown!r}")


def _split_raw(text: str) -> Iterator[tuple[str, str]]:
    """Element string with GS separators -> (ai, data) pairs, lazily so that the first fault in
    the string is the one reported."""
    pos = 0
    while pos < len(text):
        if text[pos] == GS:  # FNC1 after a fixed-length field or doubled: harmless
            pos += 1
            continue
        ai, spec = _match_ai(text, pos)
        pos += len(ai)
        if spec.fixed:
            value = text[pos : pos + spec.length]
            if len(value) < spec.length:
                raise Gs1Error(f"AI ({ai}) {spec.title} must be {spec.length} characters, string ends after {len(value)}")
            pos += spec.length
            if ai[:2] not in _PREDEFINED_PREFIXES and pos < len(text) and text[pos] != GS:
                raise Gs1Error(f"AI ({ai}) is not of predefined length and must be followed by GS (FNC1)")
        else:
            end = text.find(GS, pos)
            end = len(text) if end < 0 else end
            value = text[pos:end]
            if len(value) > spec.length:
                raise Gs1Error(
                    f"AI ({ai}) {spec.title} is {len(value)} characters, more than its maximum {spec.length}: "
                    "a GS (FNC1) separator is probably missing"
                )
            pos = end
        yield ai, value


def _split_hri(text: str) -> list[tuple[str, str]]:
    """'(01)...(17)...' -> [(ai, data)]. Data containing '(' followed by digits and ')' is
    ambiguous in this form and is read as the next AI, as every HRI parser does."""
    matches = list(_HRI_AI.finditer(text))
    if not matches or matches[0].start() != 0:
        raise Gs1Error(f"human-readable GS1 data must start with '(AI)', got {text[:12]!r}")
    out: list[tuple[str, str]] = []
    for m, nxt in zip(matches, [*matches[1:], None], strict=True):
        ai = m.group(1)
        if ai not in AI_TABLE:
            raise Gs1Error(f"unknown or unsupported application identifier ({ai})")
        out.append((ai, text[m.end() : nxt.start() if nxt else len(text)]))
    return out


def parse_element_string(text: str, today: date | None = None) -> Gs1Data:
    """Parse decoded GS1 data (GS-separated, optionally with a symbology identifier, or the
    '(AI)data' form). `today` anchors the century of YYMMDD dates (default: the system date)."""
    if not isinstance(text, str):
        raise Gs1Error(f"element string must be text, got {type(text).__name__}")
    if text.startswith("]") and len(text) >= 3:
        sym, text = text[:3], text[3:]
        if sym not in GS1_SYMBOLOGY_IDS:
            raise Gs1Error(f"symbology identifier {sym} does not announce GS1 data (expected one of ]d2, ]C1, ]Q3)")
    text = text.lstrip(GS)  # some scanners transmit the leading FNC1 as GS
    if not text:
        raise Gs1Error("element string is empty")
    elements: Iterable[tuple[str, str]] = _split_hri(text) if text.startswith("(") else _split_raw(text)
    seen: dict[str, str] = {}
    for ai, value in elements:
        _check_value(ai, AI_TABLE[ai], value, today)
        if ai in seen:
            raise Gs1Error(f"AI ({ai}) appears twice")
        seen[ai] = value
    expiry = decode_date(seen["17"], today) if "17" in seen else None
    other = {ai: v for ai, v in seen.items() if ai not in ("01", "10", "17", "21")}
    return Gs1Data(gtin=seen.get("01"), lot=seen.get("10"), expiry=expiry, serial=seen.get("21"), other=other)


def _elements(data: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = list(data.items()) if isinstance(data, Mapping) else list(data)
    seen: set[str] = set()
    for ai, value in items:
        if ai not in AI_TABLE:
            raise Gs1Error(f"unknown or unsupported application identifier ({ai})")
        if ai in seen:
            raise Gs1Error(f"AI ({ai}) given twice")
        seen.add(ai)
        _check_value(ai, AI_TABLE[ai], value, None)
    return items


def encode_element_string(data: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """AI -> data pairs as the element string a GS1 symbol carries: a GS after each field that
    is not of predefined length, except the last. Values are checked as the parser checks them."""
    items = _elements(data)
    parts: list[str] = []
    for i, (ai, value) in enumerate(items):
        parts.append(ai + value)
        if i < len(items) - 1 and ai[:2] not in _PREDEFINED_PREFIXES:
            parts.append(GS)
    return "".join(parts)


def encode_hri(data: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """AI -> data pairs in the human-readable '(01)...(17)...' form (what zxing-cpp writes)."""
    return "".join(f"({ai}){value}" for ai, value in _elements(data))
