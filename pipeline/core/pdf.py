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


class ReportPdf:
    """Headings, paragraphs and tables in the one style every report shares. A section heading
    never sits alone at the foot of a page: it starts a new page when its first lines would not fit."""

    def __init__(self, title: str, footer: Callable[[int], str]) -> None:
        from fpdf.fonts import FontFace

        self.pdf = a4_report(title, footer)
        self._head = FontFace(emphasis="BOLD", fill_color=(230, 230, 230))

    def h1(self, text: str) -> None:
        self.pdf.set_font("Helvetica", "B", 16)
        self.pdf.multi_cell(0, 9, latin(text), new_x="LMARGIN", new_y="NEXT")

    def h2(self, text: str, room: float = 30) -> None:
        """A section heading; `room` (mm) is what must fit under it on the same page."""
        pdf = self.pdf
        if pdf.will_page_break(room):
            pdf.add_page()
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 12)
        pdf.cell(0, 8, latin(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    def para(self, text: str, color: tuple[int, int, int] = (0, 0, 0), style: str = "", size: float = 9) -> None:
        pdf = self.pdf
        pdf.set_font("Helvetica", style, size)
        pdf.set_text_color(*color)
        pdf.multi_cell(0, 5 if size <= 9 else 6, latin(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)
        pdf.set_font("Helvetica", "", 9)

    def table(self, header: list[str] | None, rows: list[list[object]], widths: tuple[int, ...] | None = None,
              first_bold: bool = False) -> None:
        """Rows under an optional grey heading row; `first_bold` sets the first column in bold."""
        from fpdf.fonts import FontFace

        pdf = self.pdf
        pdf.set_font("Helvetica", "", 8)
        with pdf.table(col_widths=widths, headings_style=self._head, line_height=5, text_align="LEFT",
                       first_row_as_headings=header is not None) as t:
            if header is not None:
                t.row([latin(h) for h in header])
            for row in rows:
                r = t.row()
                for i, c in enumerate(row):
                    r.cell(latin(c), style=FontFace(emphasis="BOLD") if first_bold and i == 0 else None)
        pdf.set_font("Helvetica", "", 9)
        pdf.ln(2)
