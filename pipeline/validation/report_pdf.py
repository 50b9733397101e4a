"""The validation report as the PDF a QA person reads and signs off (A4, `pipeline.core.pdf`).

Everything is drawn from the report's JSON (`pipeline.validation.report`), section by section in
the order a reviewer checks them: verdict, intended use, training data, test set, criteria,
results, judgement, parity, Knapp, challenges, approval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.pdf import ReportPdf

GREEN, RED = (0, 110, 0), (170, 0, 0)


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, int | float) else f"{100 * x:.2f} %"


def _table(doc: ReportPdf, rows: list[list[object]], widths: tuple[int, ...], header: list[str] | None = None
           ) -> None:
    """A table; a two-column one without a header is label: value, the labels in bold."""
    doc.table(header, rows, widths, first_bold=header is None and len(widths) == 2)


def render_pdf(report: dict[str, Any], path: Path) -> None:
    m, use = report["model"], report["intended_use"]
    title = f"Validation report {m['classifier']} version {m['version']}"
    doc = ReportPdf(title, lambda page: f"{title} - generated {report['generated_utc']} - page {page} of {{nb}}")
    doc.h1(title)
    passed = report["passed"]
    doc.para(f"Product {m['product']}; model.onnx sha256 {m['onnx_sha256']}; generated {report['generated_utc']} "
             f"by {report['generated_by']}.")
    doc.para("ACCEPTANCE CRITERIA MET" if passed else "ACCEPTANCE CRITERIA FAILED: NOT DEPLOYABLE",
             GREEN if passed else RED, "B")
    for f in report["judgement"]["failed"]:
        doc.para(f"- {f}", RED)

    doc.h2("1. Intended use")
    space = use["input_space"]
    recipes = use["recipes"] if isinstance(use["recipes"], str) else ", ".join(use["recipes"])
    _table(doc, [
        ["statement", use["statement"]],
        ["product", use["product"]],
        ["recipes", recipes],
        ["stations", use["stations"] if isinstance(use["stations"], str) else
         "; ".join(f"{ref}: {', '.join(names)}" for ref, names in use["stations"].items())],
        ["defect classes", ", ".join(use["defect_classes"]) or "none"],
        ["input frames", space["frames"]],
        ["model input", space["model_input"]],
        ["invariance", f"{space['invariance']} ({space.get('test_time_views') or 1} test-time view(s))"],
        ["input-space check", _reference_text(space.get("reference"))],
    ], (35, 145))

    doc.h2("2. Training data")
    t = report["training_data"]
    _table(doc, [
        ["training image hashes", f"{t['training_images_sha256_file']} ({t['training_images'] or 0} images)"],
        ["sha256 of that file", t["training_images_sha256"] or "none recorded"],
        ["source", t["source"]],
        ["training set hash", t["train_sha256"] or "none recorded"],
        ["validation set hash", t["validation_sha256"] or "none recorded"],
    ], (40, 140))

    doc.h2("3. Independent test set (registered, hash-locked)")
    s = report["test_set"]
    _table(doc, [
        ["name", s["name"]], ["folder", s["path"]], ["dataset sha256", s["sha256"]],
        ["units", f"{s['units']} ({s['defects']} defective; classes {', '.join(s['classes'])})"],
        ["registered", f"{s['registered_at']} by {s['registered_by']} (record {s['registration_record']})"],
        ["read for this report", f"audit record {s['read_record']}"],
        ["independence", s["independence"]["text"]],
    ], (40, 140))

    doc.h2("4. Acceptance criteria (recorded before the test)")
    c = report["criteria"]
    rows = [[k, _pct(v) if isinstance(v, float | int) and not isinstance(v, bool) else ("yes" if v else "no")]
            for k, v in c.items() if k not in ("recorded_utc", "recorded_by", "audit_record", "signature")]
    rows.append(["recorded", f"{c['recorded_utc']} by {c['recorded_by']} (record {c['audit_record']}, "
                             f"signature {c['signature']})"])
    _table(doc, rows, (40, 140))

    doc.h2("5. Results at the version's thresholds")
    e = report["evaluation"]
    mt = e["metrics"]
    doc.para(f"Method: {e['method']}.")
    _table(doc, [
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
        _table(doc, [[k, _pct(v)] for k, v in recall.items()], (40, 140), ["defect class", "detection rate"])

    doc.h2("6. Judgement against the criteria")
    checks = report["judgement"]["checks"]
    _table(doc, [[ch["text"]] for ch in checks] + [[s["independence"]["text"]]], (180,))

    doc.h2("7. ONNX parity")
    p = report["parity"]
    if isinstance(p, dict):
        said = [f"max |dSCORE| {p.get('max_abs_diff_score', p.get('max_abs_diff'))}",
                f"tolerance {p.get('tolerance')}"]
        said += [f"{p['n_images']} images"] if "n_images" in p else []
        said += [f"onnxruntime {p['onnxruntime_version']}"] if "onnxruntime_version" in p else []
        doc.para(f"{'passed' if p.get('passed') else 'NOT passed'}: {', '.join(said)}.")
    else:
        doc.para(str(p))

    doc.h2("8. Knapp study")
    k = report["knapp"]
    if isinstance(k, dict):
        f = k["figures"]
        rze = f.get("rze")
        fr = k.get("false_reject") or {}
        _table(doc, [
            ["verdict", f"{k['verdict']}: RZE {'n/a' if rze is None else f'{rze:.3f}'}"],
            ["figures", f"FQ manual {f.get('fq_manual')}, FQ machine {f.get('fq_machine')}, "
                        f"{f.get('reject_zone_units')} units in the manual reject zone"],
            ["false-reject test", f"{_pct(fr.get('rate'))} of {fr.get('presentations', 0)} good presentations"
             if fr else "not run"],
            ["model", k["model"]],
            ["study", f"{k['file']} (sha256 {k['sha256']}), generated {k.get('generated')}"],
        ], (40, 140))
    else:
        doc.para(str(k))

    doc.h2("9. Challenge runs of the product's recipes")
    ch_rows = report["challenges"]
    if isinstance(ch_rows, list):
        doc.para("Challenge runs judge the line's live version at the time of the run.")
        _table(doc, [[r["finished_time"], r["line"], r["lot"], r["phase"], r["recipe"],
                      "passed" if r["passed"] else "FAILED", r["audit_record"]] for r in ch_rows],
               (34, 18, 26, 12, 40, 16, 34), ["finished", "line", "lot", "phase", "recipe", "result", "record"])
    else:
        doc.para(str(ch_rows))

    doc.h2("10. Approval")
    doc.para("This report is approved by a QA electronic signature (meaning 'approved') in the audit trail "
               "(linesight validation approve), bound to the sha256 of this file and of its JSON. A deploy of the "
               "version is refused while no approval matches them.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    doc.pdf.output(str(tmp))
    tmp.replace(path)


def _reference_text(ref: dict[str, Any] | None) -> str:
    """The version's input-space reference in a line: outside these ranges a pass becomes review."""
    if not ref:
        return "no input-space reference in this version: no out-of-distribution check (docs/models.md)"
    ranges = "; ".join(f"{k} {lo:.4g}..{hi:.4g}" for k, (lo, hi) in ref.get("ranges", {}).items())
    return f"from {ref.get('n_images', '?')} training images; a pass outside becomes review: {ranges}"
