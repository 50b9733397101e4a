"""Every decoder at the edge raises only its declared error, whatever it is given (issue 13).

A few thousand generated inputs per decoder, from the harness that runs 100k per decoder for
docs/benchmarks.md (benchmarks/fuzz_decoders.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fuzz_decoders import DECODERS, fuzz  # noqa: E402


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoder_raises_only_its_declared_error(decoder: str) -> None:
    n, crashes, _ = fuzz(decoder, 300 if decoder == "dataset_row" else 3000, seed=7)
    assert crashes == 0, f"{crashes} of {n} generated inputs crashed the {decoder} decoder"
