"""GS1 element strings: the three decoded forms, the GS1 rules a reject must name, encoding."""

from __future__ import annotations

import re
from datetime import date

import pytest

from pipeline.wire.gs1 import (
    GS,
    Gs1Data,
    Gs1Error,
    decode_date,
    encode_date,
    encode_element_string,
    encode_hri,
    gtin_check_digit,
    normalize_gtin,
    parse_element_string,
)

TODAY = date(2026, 11, 29)
GTIN = "09506000134352"  # GS1's own example GTIN
EXPECTED = Gs1Data(gtin=GTIN, lot="AB-12", expiry=date(2027, 12, 31), serial="X1/7")


@pytest.mark.parametrize(
    "text",
    [
        "01" "09506000134352" "17" "271231" "10" f"AB-12{GS}" "21" "X1/7",  # GS-separated
        "]d2" "01" "09506000134352" "17" "271231" "10" f"AB-12{GS}" "21" "X1/7",  # symbology identifier
        f"{GS}" "01" "09506000134352" "17" "271231" "10" f"AB-12{GS}" "21" "X1/7",  # leading FNC1 as GS
        "(01)09506000134352(17)271231(10)AB-12(21)X1/7",  # human-readable form
        "21" f"X1/7{GS}" "10" f"AB-12{GS}" "01" "09506000134352" "17" "271231",  # any order
    ],
)
def test_the_decoded_forms_parse_alike(text: str) -> None:
    assert parse_element_string(text, TODAY) == EXPECTED


def test_check_digits_of_gs1_examples() -> None:
    assert gtin_check_digit("0950600013435") == 2
    assert gtin_check_digit("400638133393") == 1  # EAN-13 4006381333931
    assert gtin_check_digit("9638507") == 4  # EAN-8 96385074
    assert gtin_check_digit("10614141123456789") == 7  # SSCC (00)106141411234567897
    assert normalize_gtin("96385074") == "00000096385074"
    assert normalize_gtin("4006381333931") == "04006381333931"
    assert parse_element_string("00106141411234567897", TODAY).other == {"00": "106141411234567897"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0109506000134353", "check digit 3, expected 2"),
        ("(01)0950600013435", "must be 14 characters, got 13"),
        ("010950600013435", "string ends after 13"),
        ("01095060001343X2", "digits only"),
        ("0010614141123456789" "0", "check digit 0, expected 7"),
        ("10" + "A" * 21, "more than its maximum 20: a GS (FNC1) separator is probably missing"),
        ("10A B", "outside GS1 character set 82"),
        (f"10{GS}21X", "must be 1..20 characters, got 0"),
        ("17271301", "month 13"),
        ("17270230", "day 30 does not exist in 2027-02"),
        ("172702", "must be 6 characters, string ends after 4"),
        ("99123", "unknown or unsupported application identifier at position 0"),
        ("(99)123", "unknown or unsupported application identifier (99)"),
        (f"10A{GS}10B", "AI (10) appears twice"),
        ("]d10109506000134352", "symbology identifier ]d1 does not announce GS1 data"),
        ("", "empty"),
        ("01 09506000134352", "AI (01) GTIN must be digits only"),
        ("70032712310930" "10AB", "must be followed by GS"),
        ("ABC", "unknown or unsupported application identifier"),
    ],
)
def test_broken_element_strings_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(Gs1Error, match=re.escape(message)):
        parse_element_string(text, TODAY)


def test_missing_gs_after_a_short_lot_swallows_the_serial() -> None:
    """Without the separator the serial becomes part of the lot: the judge sees a wrong lot and no
    serial, which is what the symbol really says."""
    data = parse_element_string("010950600013435210AB-1221X1", TODAY)
    assert data.lot == "AB-1221X1" and data.serial is None


@pytest.mark.parametrize(
    ("yymmdd", "expected"),
    [
        ("280200", date(2028, 2, 29)),  # day 00: last day of the month, leap year
        ("270200", date(2027, 2, 28)),
        ("271100", date(2027, 11, 30)),
        ("271231", date(2027, 12, 31)),
        ("760101", date(2076, 1, 1)),  # +50 years: this century
        ("770101", date(1977, 1, 1)),  # +51 years: previous century
        ("770100", date(1977, 1, 31)),
    ],
)
def test_dates(yymmdd: str, expected: date) -> None:
    assert decode_date(yymmdd, TODAY) == expected
    assert parse_element_string("17" + yymmdd, TODAY).expiry == expected


def test_century_rule_near_a_century_end() -> None:
    assert decode_date("000101", date(2099, 6, 1)) == date(2100, 1, 1)  # -99: next century
    assert decode_date("490101", date(2099, 6, 1)) == date(2149, 1, 1)  # -50: next century
    assert decode_date("500101", date(2099, 6, 1)) == date(2050, 1, 1)  # -49: this century
    assert decode_date("990101", date(2000, 6, 1)) == date(1999, 1, 1)


def test_encode_places_gs_only_after_variable_fields() -> None:
    data = [("01", GTIN), ("17", encode_date(date(2027, 12, 31))), ("10", "AB-12"), ("21", "X1/7")]
    text = encode_element_string(data)
    assert text == "01" "09506000134352" "17" "271231" "10" f"AB-12{GS}" "21" "X1/7"
    assert parse_element_string(text, TODAY) == EXPECTED
    assert encode_hri(data) == "(01)09506000134352(17)271231(10)AB-12(21)X1/7"
    assert encode_element_string({"21": "S", "7003": "2712311230", "10": "L"}) == f"21S{GS}70032712311230{GS}10L"
    assert encode_date(date(2027, 2, 14), end_of_month=True) == "270200"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"01": "09506000134353"}, "check digit"),
        ({"10": "x" * 21}, "1..20 characters"),
        ({"98": "1"}, "unknown"),
        ({"17": "271332"}, "month 13"),
    ],
)
def test_encode_refuses_what_the_parser_would(data: dict[str, str], message: str) -> None:
    with pytest.raises(Gs1Error, match=message):
        encode_element_string(data)


@pytest.mark.parametrize("gtin", ["", "123", "0950600013435X", "09506000134353", "123456789012345"])
def test_normalize_gtin_refuses(gtin: str) -> None:
    with pytest.raises(Gs1Error):
        normalize_gtin(gtin)
