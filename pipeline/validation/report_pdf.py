"""The validation report as the PDF a QA person reads and signs off (A4, `pipeline.core.pdf`).

Everything is drawn from the report's JSON (`pipeline.validation.report`), section by section in
the order a reviewer checks them: verdict, intended use, training data, test set, criteria,
results, judgement, parity, Knapp, challenges, approval.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.pdf import a4_report, latin

if TYPE_CHECKING:
    from fpdf import FPDF

GREEN, RED = (0, 110, 0), (170, 0, 0)


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, int | float) else f"{100 * x:.2f} %"


def _h2(pdf: FPDF, text: str) -> None:
    if pdf.will_page_break(25):
        pdf.add_page()
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 7, latin(text), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)


def _para(pdf: FPDF, text: str, color: tuple[int, int, int] = (0, 0, 0), style: str = "") -> None:
    pdf.set_font("Helvetica", style, 9)
    pdf.set_text_color(*color)
    pdf.multi_cell(0, 4.6, latin(text), align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("Helvetica", "", 9)


def _table(pdf: FPDF, rows: list[list[object]], widths: tuple[int, ...], header: list[str] | None = None) -> None:
    from fpdf.fonts import FontFace

    pdf.set_font("Helvetica", "", 8)
    with pdf.table(col_widths=widths, line_height=4.6, text_align="LEFT", first_row_as_headings=header is not None,
                   headings_style=FontFace(emphasis="BOLD", fill_color=(230, 230, 230))) as t:
        if header is not None:
            t.row([latin(h) for h in header])
        for row in rows:
            t.row([latin(c) for c in row])
    pdf.set_font("Helvetica", "", 9)
    pdf.ln(1)


def render_pdf(report: dict[str, Any], path: Path) -> None:
    m, use = report["model"], report["intended_use"]
    title = f"Validation report {m['classifier']} version {m['version']}"
    pdf = a4_report(title, lambda page: f"{title} - generated {report['generated_utc']} - page {page} of {{nb}}")
    pdf.set_font("Helvetica", "B", 15)
    pdf.multi_cell(0, 8, latin(title), new_x="LMARGIN", new_y="NEXT")
    passed = report["passed"]
    _para(pdf, f"Product {m['product']}; model.onnx sha256 {m['onnx_sha256']}; generated {report['generated_utc']} "
               f"by {report['generated_by']}.")
    _para(pdf, "ACCEPTANCE CRITERIA MET" if passed else "ACCEPTANCE CRITERIA FAILED: NOT DEPLOYABLE",
          GREEN if passed else RED, "B")
    for f in report["judgement"]["failed"]:
        _para(pdf, f"- {f}", RED)

    _h2(pdf, "1. Intended use")
    space = use["input_space"]
    recipes = use["recipes"] if isinstance(use["recipes"], str) else ", ".join(use["recipes"])
    _table(pdf, [
        ["statement", use["statement"]],
        ["product", use["product"]],
        ["recipes", recipes],
        ["stations", use["stations"] if isinstance(use["stations"], str) else
         "; ".join(f"{ref}: {', '.join(names)}" for ref, names in use["stations"].items())],
        ["defect classes", ", ".join(use["defect_classes"]) or "none"],
        ["input frames", space["frames"]],
        ["model input", space["model_input"]],
        ["invariance", f"{space['invariance']} ({space.get('test_time_views') or 1} test-time view(s))"],
    ], (35, 145))

    _h2(pdf, "2. Training data")
    t = report["training_data"]
    _table(pdf, [
        ["training image hashes", f"{t['training_images_sha256_file']} ({t['training_images'] or 0} images)"],
        ["sha256 of that file", t["training_images_sha256"] or "none recorded"],
        ["source", t["source"]],
        ["training set hash", t["train_sha256"] or "none recorded"],
        ["validation set hash", t["validation_sha256"] or "none recorded"],
    ], (40, 140))

    _h2(pdf, "3. Independent test set (registered, hash-locked)")
    s = report["test_set"]
    _table(pdf, [
        ["name", s["name"]], ["folder", s["path"]], ["dataset sha256", s["sha256"]],
        ["units", f"{s['units']} ({s['defects']} defective; classes {', '.join(s['classes'])})"],
        ["registered", f"{s['registered_at']} by {s['registered_by']} (record {s['registration_record']})"],
        ["read for this report", f"audit record {s['read_record']}"],
        ["independence", s["independence"]["text"]],
    ], (40, 140))

    _h2(pdf, "4. Acceptance criteria (recorded before the test)")
    c = report["criteria"]
    rows = [[k, _pct(v) if isinstance(v, float | int) and not isinstance(v, bool) else ("yes" if v else "no")]
            for k, v in c.items() if k not in ("recorded_utc", "recorded_by", "audit_record", "signature")]
    rows.append(["recorded", f"{c['recorded_utc']} by {c['recorded_by']} (record {c['audit_record']}, "
                             f"signature {c['signature']})"])
    _table(pdf, rows, (40, 140))

    _h2(pdf, "5. Results at the version's thresholds")
    e = report["evaluation"]
    mt = e["metrics"]
    _para(pdf, f"Method: {e['method']}.")
    _table(pdf, [
        ["thresholds", f"review {e['thresholds']['review']:.4f}, reject {e['thresholds']['reject']:.4f}"],
        ["units", f"{mt['n_good'] + mt['n_defect']} ({mt['n_good']} good, {mt['n_defect']} defective)"],
        ["detection rate", f"{_pct(mt['detection_rate'])} (95 % lower bound {_pct(mt['detection_rate_lower95'])})"],
        ["false-reject rate", f"{_pct(mt['false_reject_rate'])} (95 % upper bound "
                              f"{_pct(mt['false_reject_rate_upper95'])})"],
        ["review rate", f"{_pct(mt['review_rate'])} of units ({mt['good_in_review']} good units in review)"],
        ["AUROC", "n/a" if not isinstance(mt.get("auroc"), float) else f"{mt['auroc']:.4f}"],
        ["defects passed", str(mt["defects_passed"])],
    ], (40, 140))
    recall = mt.get("per_class_recall") or {}
    if recall:
        _table(pdf, [[k, _pct(v)] for k, v in recall.items()], (40, 140), ["defect class", "detection rate"])

    _h2(pdf, "6. Judgement against the criteria")
    checks = report["judgement"]["checks"]
    _table(pdf, [[ch["text"]] for ch in checks] + [[s["independence"]["text"]]], (180,))

    _h2(pdf, "7. ONNX parity")
    p = report["parity"]
    if isinstance(p, dict):
        said = [f"max |dSCORE| {p.get('max_abs_diff_score', p.get('max_abs_diff'))}",
                f"tolerance {p.get('tolerance')}"]
        said += [f"{p['n_images']} images"] if "n_images" in p else []
        said += [f"onnxruntime {p['onnxruntime_version']}"] if "onnxruntime_version" in p else []
        _para(pdf, f"{'passed' if p.get('passed') else 'NOT passed'}: {', '.join(said)}.")
    else:
        _para(pdf, str(p))

    _h2(pdf, "8. Knapp study")
    k = report["knapp"]
    if isinstance(k, dict):
        f = k["figures"]
        rze = f.get("rze")
        _para(pdf, f"{k['verdict']}: RZE {'n/a' if rze is None else f'{rze:.3f}'} (FQ manual {f.get('fq_manual')}, "
                   f"machine {f.get('fq_machine')}, {f.get('reject_zone_units')} reject-zone units); {k['model']}; "
                   f"{k['file']} (sha256 {k['sha256']}).")
    else:
        _para(pdf, str(k))

    _h2(pdf, "9. Challenge runs of the product's recipes")
    ch_rows = report["challenges"]
    if isinstance(ch_rows, list):
        _para(pdf, "Challenge runs judge the line's live version at the time of the run.")
        _table(pdf, [[r["finished_time"], r["line"], r["lot"], r["phase"], r["recipe"],
                      "passed" if r["passed"] else "FAILED", r["audit_record"]] for r in ch_rows],
               (34, 18, 26, 12, 40, 16, 34), ["finished", "line", "lot", "phase", "recipe", "result", "record"])
    else:
        _para(pdf, str(ch_rows))

    _h2(pdf, "10. Approval")
    _para(pdf, "This report is approved by a QA electronic signature (meaning 'approved') in the audit trail "
               "(linesight validation approve), bound to the sha256 of this file and of its JSON. A deploy of the "
               "version is refused while no approval matches them.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pdf.output(str(tmp))
    tmp.replace(path)
