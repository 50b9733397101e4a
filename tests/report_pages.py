"""A PDF report as a person sees it: every page rendered to PNG (150 dpi) with its text, and the
checks a reader's eye makes (the figures are there, nothing runs off the page or hides behind a
dark fill). Shared by every report's test (batch record, Knapp study, validation report).

Rendered pages are kept under ``$LINESIGHT_SCREENSHOTS`` when set (else the test's tmp dir), so
a person can look at exactly what the test looked at."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DPI = 150
MARGIN_MM = 5.0


@dataclass(frozen=True)
class Pages:
    text: str
    pngs: list[Path]
    # Every text box of every page: (left, bottom, right, top, page width, page height) in PDF points.
    boxes: list[tuple[float, float, float, float, float, float]]


def pdf_pages(path: Path, out: Path) -> Pages:
    """Text of every page, each page as a PNG, and every text box with its page size."""
    import pypdfium2 as pdfium

    shots = os.environ.get("LINESIGHT_SCREENSHOTS")
    out = Path(shots) if shots else out
    out.mkdir(parents=True, exist_ok=True)
    doc = pdfium.PdfDocument(str(path))
    texts, pngs, boxes = [], [], []
    for i in range(len(doc)):
        page = doc[i]
        w, h = page.get_size()
        tp = page.get_textpage()
        texts.append(tp.get_text_range())
        for j in range(tp.count_rects()):
            boxes.append((*tp.get_rect(j), w, h))
        png = out / f"{path.stem}-page-{i + 1}.png"
        page.render(scale=DPI / 72).to_pil().save(png)
        pngs.append(png)
    return Pages("\n".join(texts), pngs, boxes)


def assert_readable(pages: Pages, needed: list[str] | tuple[str, ...] = ()) -> None:
    """Every needed string is on the pages; no text box or ink reaches into the outer 5 mm of a
    page (nothing overflows); pages are dark text on white, not a dark fill behind a table."""
    text = pages.text
    missing = [s for s in needed if s not in text]
    assert not missing, f"not on the rendered pages: {missing}"
    edge_pt = MARGIN_MM / 25.4 * 72
    for left, bottom, right, top, w, h in pages.boxes:
        assert left >= edge_pt and right <= w - edge_pt and bottom >= edge_pt and top <= h - edge_pt, (
            "text runs into the page edge", (left, bottom, right, top))
    border = int(DPI / 25.4 * MARGIN_MM)
    for png in pages.pngs:
        a = np.asarray(Image.open(png).convert("L"))
        # Text and a row of unit photographs stay near 8 %; a dark fill behind a table is far more.
        assert (a < 100).mean() < 0.15, f"{png}: {(a < 100).mean():.0%} dark (a fill behind the text?)"
        assert a[:border].min() > 250 and a[-border:].min() > 250, f"{png}: ink in the top/bottom margin"
        assert a[:, :border].min() > 250 and a[:, -border:].min() > 250, f"{png}: ink in the left/right margin"
