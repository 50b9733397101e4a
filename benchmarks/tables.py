"""Markdown tables for the benchmarks' printed figures (pasted as is into docs/)."""

from __future__ import annotations

from collections.abc import Sequence


def md_header(columns: Sequence[str]) -> str:
    return "| " + " | ".join(columns) + " |\n" + "|" + "---|" * len(columns)


def md_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
