"""A4 report PDFs (fpdf2, core fonts): the page set-up every LineSight report a person signs shares.

The batch record and the Knapp study report are read and filed by QA: the same page size,
margins, metadata and footer (what the page is, when it was generated, page n of N) on each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fpdf import FPDF


def latin(text: object) -> str:
    """The PDF's core fonts are Latin-1: map the typographic characters, replace the rest."""
    s = str(text).replace("\u2014", "-").replace("\u2013", "-").replace("\u2026", "...")
    return s.encode("latin-1", "replace").decode("latin-1")


def a4_report(title: str, footer: Callable[[int], str]) -> FPDF:
    """A portrait A4 document with its first page added; `footer(page)` is the text at the foot
    of each page, where ``{nb}`` stands for the page count."""
    from fpdf import FPDF

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(title)
    pdf.set_author("LineSight")
    pdf.alias_nb_pages()

    def draw_footer() -> None:
        pdf.set_y(-12)
        pdf.set_font("Helvetica", "I", 8)
        pdf.cell(0, 6, latin(footer(pdf.page_no())), align="C")

    pdf.footer = draw_footer  # type: ignore[method-assign]
    pdf.add_page()
    return pdf
