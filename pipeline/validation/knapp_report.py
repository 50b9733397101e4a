"""The Knapp study's report: `knapp.json` (every figure) and `knapp.pdf`, the one a QA person reads.

The PDF states the model and set judged, the rule, the figures, the verdict, a chart of each
unit's rejection probability by the machine against the manual method's (drawn with fpdf2's own
primitives: nothing to install), the units the two methods disagree on, the false-reject test,
and every unit's numbers. Fonts are the PDF core fonts (Latin-1), as in the batch record.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.pdf import ReportPdf, latin

if TYPE_CHECKING:
    from fpdf import FPDF

EQUIVALENT, NOT_EQUIVALENT = "equivalent or better", "not equivalent"
GREEN, RED, GREY = (0, 110, 0), (170, 0, 0), (90, 90, 90)
DEFECT_COLOUR, GOOD_COLOUR = (200, 40, 40), (30, 90, 200)


@dataclass
class KnappStudy:
    """Every figure of one study, as knapp.json holds it (pipeline/validation/knapp.py makes it)."""

    generated: str
    product: str
    model: str
    classifier: str
    model_version: int | None
    thresholds: dict[str, float]
    set: dict[str, Any]
    manual: dict[str, Any]
    machine: dict[str, Any]
    variation: dict[str, Any]
    rule: str
    figures: dict[str, Any]
    verdict: str
    machine_accepts_manual_rejects: list[str]
    machine_rejects_manual_accepts: list[str]
    units: list[dict[str, Any]]
    false_reject: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)

    @property
    def equivalent(self) -> bool:
        return self.verdict == EQUIVALENT

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_json(study: KnappStudy, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(study.as_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def chart(pdf: FPDF, units: list[dict[str, Any]], size: float = 105.0) -> None:
    """Scatter of p(manual) (x) against p(machine) (y), zone limits at 0.3 and 0.7, the manual
    reject zone shaded (the units the RZE sums over) and the diagonal (equal probability).
    Units at the same point are one marker, larger with more units, their count above it. The
    axes run a little past 0 and 1 so markers there stay inside the frame, clear of the ticks."""
    lo, hi = -0.04, 1.06
    left = pdf.l_margin + 22
    top = pdf.get_y() + 7
    x0, y0 = left, top + size  # bottom-left corner of the frame

    def px(p: float) -> float:
        return x0 + (p - lo) / (hi - lo) * size

    def py(p: float) -> float:
        return y0 - (p - lo) / (hi - lo) * size

    pdf.set_fill_color(250, 225, 225)
    pdf.rect(px(0.7), top, px(hi) - px(0.7), size, style="F")  # manual reject zone
    pdf.set_fill_color(228, 242, 228)
    pdf.rect(px(lo), top, px(0.3) - px(lo), size, style="F")  # manual accept zone
    pdf.set_line_width(0.1)
    pdf.set_draw_color(205, 205, 205)
    for i in range(11):
        pdf.line(px(i / 10), top, px(i / 10), y0)
        pdf.line(x0, py(i / 10), x0 + size, py(i / 10))
    pdf.set_draw_color(120, 120, 120)
    pdf.set_line_width(0.3)
    pdf.set_dash_pattern(dash=1.5, gap=1.0)
    for z in (0.3, 0.7):
        pdf.line(px(z), top, px(z), y0)
        pdf.line(x0, py(z), x0 + size, py(z))
    pdf.set_dash_pattern(dash=0.6, gap=0.8)
    pdf.line(px(lo), py(lo), px(hi), py(hi))
    pdf.set_dash_pattern()
    pdf.set_draw_color(0, 0, 0)
    pdf.rect(x0, top, size, size)

    pdf.set_font("Helvetica", "", 7)
    for i in range(0, 11):
        t = f"{i / 10:.1f}"
        pdf.text(px(i / 10) - pdf.get_string_width(t) / 2, y0 + 4, t)
        pdf.text(x0 - pdf.get_string_width(t) - 1.5, py(i / 10) + 1, t)
    pdf.set_text_color(*GREY)  # zone names above the frame, where no marker can be
    pdf.text(px(lo), top - 1.5, "manual accept zone")
    t = "manual reject zone"
    pdf.text(px(hi) - pdf.get_string_width(t), top - 1.5, t)
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("Helvetica", "B", 8)
    xt = "manual rejection probability (inspectors x inspections)"
    pdf.text(x0 + size / 2 - pdf.get_string_width(xt) / 2, y0 + 9, xt)
    yt = "machine rejection probability (presentations)"
    with pdf.rotation(90, x0 - 10, y0 - size / 2):
        pdf.text(x0 - 10 - pdf.get_string_width(yt) / 2, y0 - size / 2, yt)

    points = Counter((u["p_manual"], u["p_machine"], u["label"]) for u in units)
    pdf.set_font("Helvetica", "", 5.5)
    for (pm, pa, label), count in sorted(points.items()):
        r = 0.8 + 0.25 * math.sqrt(count - 1)
        pdf.set_fill_color(*(DEFECT_COLOUR if label == "defect" else GOOD_COLOUR))
        pdf.set_draw_color(255, 255, 255)
        pdf.set_line_width(0.15)
        pdf.circle(px(pm), py(pa), r, style="FD")
        if count > 1:
            t = str(count)
            pdf.text(px(pm) - pdf.get_string_width(t) / 2, py(pa) - r - 0.5, t)
    pdf.set_draw_color(0, 0, 0)

    # Legend to the right of the plot.
    lx, ly = x0 + size + 5, top + 2
    pdf.set_font("Helvetica", "", 7)
    for colour, text in ((DEFECT_COLOUR, "labelled defect"), (GOOD_COLOUR, "labelled good")):
        pdf.set_fill_color(*colour)
        pdf.circle(lx + 1, ly, 1.0, style="F")
        pdf.text(lx + 3.5, ly + 1, text)
        ly += 5
    pdf.set_xy(lx, ly)
    pdf.multi_cell(pdf.w - pdf.r_margin - lx, 3.2, latin(
        "A number above a marker: units at that point. Dashed lines: zone limits 0.3 and 0.7. "
        "Dotted diagonal: equal probability; below it the machine rejects the unit less often "
        "than the manual method. The RZE sums over the shaded reject zone."), align="L")
    pdf.set_fill_color(255, 255, 255)  # tables drawn after the chart fill with the current colour
    pdf.set_xy(pdf.l_margin, y0 + 13)
    pdf.set_font("Helvetica", "", 9)


def render_pdf(s: KnappStudy, path: Path) -> None:

    doc = ReportPdf(f"Knapp study {s.product}", lambda page: (
        f"Knapp study {s.product} - {s.classifier} version {s.model_version} - generated {s.generated} "
        f"- page {page}/{{nb}}"))
    pdf, h1, h2, para, table = doc.pdf, doc.h1, doc.h2, doc.para, doc.table

    f = s.figures
    h1(f"Knapp study - {s.product}")
    para(f"Generated {s.generated} by LineSight: the served model against the plant's manual inspection, "
         "on the same qualification set.")
    ok = s.equivalent
    para(f"Verdict: {s.verdict.upper()} - RZE {_num(f['rze'])} ({'>=' if ok else '<'} 1)", GREEN if ok else RED, "B", 12)

    h2("1. Model, qualification set and method")
    v = s.variation
    thresholds = ", ".join(f"{k} {val:.4g}" for k, val in s.thresholds.items()) or "n/a"
    table(None, [
        ["model", f"{s.model} ({s.classifier} version {s.model_version}); thresholds {thresholds}; "
                  "review and reject both count as rejected (the gate removes both)"],
        ["qualification set", f"{s.set['path']}: {s.set['units']} units ({s.set['defect']} labelled defect, "
                              f"{s.set['good']} good)"],
        ["set content hash", s.set["content_hash"]],
        ["manual results", f"{s.manual['path']} (sha256 {s.manual['sha256'][:16]}...)"],
        ["manual method", f"{len(s.manual['inspectors'])} inspector(s) ({', '.join(s.manual['inspectors'])}) x "
                          f"{s.manual['inspections_per_inspector']} inspections = {s.manual['inspections_per_unit']} "
                          "per unit"],
        ["machine method", f"{s.machine['runs']} presentations per unit ({s.machine['presentations']} in all) "
                           "through the served model"],
        ["presentation variation", f"seed {v['seed']}; position +/- {v['max_shift_px']} px; light gain "
                                   f"{v['light_gain'][0]:g}-{v['light_gain'][1]:g}; focus blur sigma "
                                   f"{v['blur_sigma_px'][0]:g}-{v['blur_sigma_px'][1]:g} px; orientation "
                                   f"({v['invariance']}): {v['orientation']}"],
    ], (38, 142), first_bold=True)

    h2("2. Rule")
    para(s.rule)

    h2("3. Figures")
    table(["figure", "manual", "machine"], [
        ["units in the manual reject zone (p >= 0.7)", f["reject_zone_units"], f["reject_zone_units"]],
        ["quality factor FQ = sum of p over those units", _num(f["fq_manual"], 2), _num(f["fq_machine"], 2)],
        ["reject zone efficiency of the method (FQ / units)", _num(f["rze_manual"]), _num(f["rze_machine"])],
        ["RZE = FQ(machine) / FQ(manual)", "", _num(f["rze"])],
        *[[f"units in the {z} zone", f["zones_manual"][z], f["zones_machine"][z]]
          for z in ("accept", "grey", "reject")],
    ], (100, 40, 40))
    m = f["zone_matrix"]
    table(["units: manual zone \\ machine zone", "machine accept", "machine grey", "machine reject"],
          [[f"manual {z}", m[z]["accept"], m[z]["grey"], m[z]["reject"]] for z in ("accept", "grey", "reject")],
          (75, 35, 35, 35))

    h2("4. Rejection probability per unit: machine against manual", room=135)
    chart(pdf, s.units)

    h2("5. Units the methods disagree on")
    para("Machine accepts (p <= 0.3) what the manual method rejects (p >= 0.7): "
         f"{len(s.machine_accepts_manual_rejects)} unit(s).",
         RED if s.machine_accepts_manual_rejects else GREEN, "B")
    by_unit = {u["unit"]: u for u in s.units}

    def unit_rows(names: list[str]) -> list[list[object]]:
        return [[n, by_unit[n]["defect"] if by_unit[n]["label"] == "defect" else "good",
                 f"{by_unit[n]['p_manual']:.2f}", f"{by_unit[n]['p_machine']:.2f}"] for n in names]

    if s.machine_accepts_manual_rejects:
        table(["unit", "labelled", "p manual", "p machine"], unit_rows(s.machine_accepts_manual_rejects),
              (100, 40, 20, 20))
    para("Machine rejects (p >= 0.7) what the manual method accepts (p <= 0.3): "
         f"{len(s.machine_rejects_manual_accepts)} unit(s).", style="B")
    if s.machine_rejects_manual_accepts:
        table(["unit", "labelled", "p manual", "p machine"], unit_rows(s.machine_rejects_manual_accepts),
              (100, 40, 20, 20))

    h2("6. False-reject test")
    fr = s.false_reject
    if fr is None:
        para("Not run (--good-count 0).")
    else:
        table(None, [
            ["good presentations", f"{fr['presentations']} ({fr['source']}: {fr['good_units']} units, each presented "
                                   "with the variation above until the count is reached)"],
            ["rejected (reject or review)", f"{fr['rejected']} ({fr['review']} of them review; "
                                            f"{fr['unscored']} unscored, counted as rejected)"],
            ["false-reject rate", _pct(fr["rate"])],
            ["one-sided 95 % upper bound", f"{_pct(fr['upper95'])} (Clopper-Pearson)"],
        ], (50, 130), first_bold=True)
    if s.warnings:
        h2("Warnings", room=20)
        for w in s.warnings:
            para(f"- {w}", RED)

    h2("Appendix: every unit", room=40)
    table(["unit", "labelled", "manual k/n", "p manual", "zone", "machine k/n", "p machine", "zone"],
          [[u["unit"], u["defect"] if u["label"] == "defect" else "good",
            f"{u['manual_rejections']}/{u['manual_inspections']}", f"{u['p_manual']:.2f}", u["zone_manual"],
            f"{u['machine_rejections']}/{u['machine_inspections']}", f"{u['p_machine']:.2f}", u["zone_machine"]]
           for u in s.units], (62, 24, 18, 14, 14, 18, 16, 14))
    pdf.output(str(path))
