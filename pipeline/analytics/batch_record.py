"""The batch (lot) record for QA release: PDF (fpdf2) and HTML (jinja2), straight from ClickHouse.

`linesight report batch LOT --pdf FILE [--html FILE]` writes it. Contents: yield; rejects by
defect class and by cause (model, fail-safe, operator override); sample rejected units; alarms;
the model versions that judged the lot with their release records and electronic signatures;
and the audit-trail verification of the chains that hold the lot's decisions (and the system
chain). Sample rejects are shown with the small JPEG the worker keeps of every unit it removes
(`reject_images`) next to the image sha256 the audit trail holds for the full frame.

The lot's start and end challenge runs head the record in their own section (their units never
count as production); a lot whose start or end challenge is missing or failed says RELEASE
REFUSED with the reason (docs/validation.md), and `report batch --release` exits 3 for it.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.analytics.challenges import LotChallenge, lot_challenges, release_refusals
from pipeline.analytics.reconciliation import BatchReconciliation, build_reconciliation, unit_verdicts_sql
from pipeline.analytics.run_report import recipe_sections
from pipeline.audit.record import DECISION_ACTION, SIGN_ACTION, SYSTEM_CHAIN
from pipeline.audit.trail import AuditTrail
from pipeline.audit.verify import VerifyReport
from pipeline.clickhouse import ClickHouseClient
from pipeline.core.pdf import ReportPdf, latin
from pipeline.recipes.lookup import review_spec_for
from pipeline.recipes.schema import ReviewSpec
from pipeline.review.lot_rules import lot_recipe
from pipeline.review.store import ReviewSummary, summarize

if TYPE_CHECKING:
    from fpdf import FPDF

IMAGES_NOTE = (
    "Images: the reduced JPEG kept of each removed unit (full frames are not retained; the audit "
    "trail holds each full frame's sha256)."
)
SAMPLE_IMAGES = 12


@dataclass(frozen=True)
class ModelRelease:
    model: str
    version: str
    units: int
    release: str  # record id of the deploy, '' when none is in the trail
    released_by: str
    released_at: str
    signatures: list[str]  # "approved by quinn (qa) 2026-...: valid"


@dataclass
class BatchRecord:
    lot: str
    generated: datetime
    reconciliation: BatchReconciliation
    inspected: int
    passed: int
    rejects_by_class: list[tuple[str, int]]
    rejects_by_cause: list[tuple[str, int]]
    samples: list[dict]
    models: list[ModelRelease]
    verification: VerifyReport
    decisions_audited: int
    overrides: list[dict] = field(default_factory=list)
    # Recipes that judged the lot (ref, units), the measured numbers' spread, and label serial
    # numbers that appeared on more than one unit (docs/recipes.md).
    recipes: list[tuple[str, int]] = field(default_factory=list)
    measurements: list[dict] = field(default_factory=list)
    duplicate_serials: list[dict] = field(default_factory=list)
    # The lot's start and end challenge runs (docs/validation.md); their own units, never production.
    challenges: list[LotChallenge] = field(default_factory=list)
    # What people decided about the lot's review units (docs/review.md); None: not looked up.
    review: ReviewSummary | None = None
    review_note: str = ""  # why the strict review rules apply, where they do

    @property
    def release_refusals(self) -> list[str]:
        """Why the lot must not be released: a start or end challenge missing or failed, a review
        unit undecided, recovered units not sampled or their sample failed."""
        return release_refusals(self.challenges) + (self.review.release_refusals() if self.review else [])

    @property
    def flags(self) -> list[str]:
        """What QA must look at before releasing (not a refusal by itself)."""
        r = self.review
        if r is None or not r.over_limit:
            return []
        return [f"review rate {100 * r.review_fraction:.2f} % of the lot is above the recipe's limit "
                f"{100 * r.max_review_fraction:.2f} %"]

    @property
    def captured(self) -> int:
        return self.reconciliation.total("captured")

    @property
    def yield_pct(self) -> float:
        return 100.0 * self.reconciliation.total("inspected_passed") / self.captured if self.captured else 0.0


def lot_review(client: ClickHouseClient, db: str, lot: str, recipes_dir: Path | None) -> tuple[ReviewSummary, str]:
    """The lot's review under its recipe's [review] rules, and why strict rules apply where they do."""
    spec, note = review_spec_for(recipes_dir, lot_recipe(client, db, lot)) if recipes_dir else (ReviewSpec(), "")
    return summarize(client, db, lot, spec), note


def lot_release_refusals(client: ClickHouseClient, db: str, lot: str, recipes_dir: Path | None) -> list[str]:
    """Why the lot may not be released, without building its whole record (`report batch --release`)."""
    return release_refusals(lot_challenges(client, db, lot)) + lot_review(client, db, lot, recipes_dir)[0].release_refusals()


def build_batch_record(
    client: ClickHouseClient, database: str, lot: str, trail: AuditTrail, *, positive_release: bool = False,
    recipes_dir: Path | None = None,
) -> BatchRecord:
    """``positive_release``: see `build_reconciliation` (``plc.gate_mode``). ``recipes_dir``: where
    the lot's recipe says how its review units are decided (None: the default [review] rules)."""
    db, p = database, {"lot": lot}
    review, review_note = lot_review(client, db, lot, recipes_dir)
    rec = build_reconciliation(client, db, lot, positive_release=positive_release)
    counts = client.query(
        f"SELECT count() AS n, countIf(verdict = 'pass') AS passed FROM ({unit_verdicts_sql(db)})",  # units
        p,
    ).named()[0]
    by_class = client.query(
        f"""SELECT defect, count() AS n FROM {db}.inspections FINAL
            WHERE lot = {{lot:String}} AND purpose = '' AND verdict != 'pass' GROUP BY defect ORDER BY n DESC, defect""",
        p,
    ).rows
    overrides = client.query(
        f"""SELECT subject AS unit, user, role, old_value, new_value, reason FROM {trail.store.table}
            WHERE action = 'unit.override'
              AND subject IN (SELECT unit_id FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND purpose = '')
            ORDER BY time""",
        p,
    ).named()
    by_cause = [
        ("model (reject or review verdict)", rec.total("inspected_rejected")),
        ("fail-safe: late verdict", rec.total("failsafe_late")),
        ("fail-safe: not inspectable / pipeline unhealthy", rec.total("failsafe_other")),
        ("fail-safe: never released (positive release; no gate record)", rec.total("not_released")),
        ("operator override", len(overrides)),
    ]
    decisions = {
        str(r["subject"]): r
        for r in client.query(
            f"""SELECT subject, JSONExtractString(detail, 'image_sha256') AS image_sha256,
                       concat(chain, '#', toString(seq)) AS record
                FROM {trail.store.table}
                WHERE action = '{DECISION_ACTION}' AND JSONExtractString(detail, 'lot') = {{lot:String}}
                  AND JSONExtractString(detail, 'purpose') = ''""",
            p,
        ).named()
    }
    sample_units = f"""SELECT unit_id FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND purpose = '' AND verdict != 'pass'
                       ORDER BY capture_time LIMIT {SAMPLE_IMAGES}"""
    samples = client.query(
        f"""SELECT unit_id, line, verdict, cause, defect, score, model_version, error
            FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND purpose = '' AND unit_id IN ({sample_units})
            ORDER BY capture_time""",
        p,
    ).named()
    images = {
        str(row["unit_id"]): base64.b64decode(row["jpeg_base64"])
        for row in client.query(
            f"""SELECT unit_id, jpeg_base64 FROM {db}.reject_images FINAL
                WHERE lot = {{lot:String}} AND unit_id IN ({sample_units})""",
            p,
        ).named()
    }
    for s in samples:
        d = decisions.get(s["unit_id"], {})
        s["image_sha256"] = d.get("image_sha256", "")
        s["audit_record"] = d.get("record", "not in the audit trail")
        s["jpeg"] = images.get(str(s["unit_id"]))
    lines = sorted({r.line for r in rec.lines})
    chains = [c for c in trail.store.chains() if c == SYSTEM_CHAIN or any(c.startswith(f"decisions/{ln}/") for ln in lines)]
    verification = VerifyReport()
    for c in chains:
        part = trail.verify(chain=c)
        verification.chains += part.chains
    verification.signatures = trail.verify(chain=SYSTEM_CHAIN).signatures if SYSTEM_CHAIN in chains else []
    return BatchRecord(
        lot=lot, generated=datetime.now(UTC), reconciliation=rec, inspected=int(counts["n"]),
        passed=int(counts["passed"]), rejects_by_class=[(str(a), int(b)) for a, b in by_class],
        rejects_by_cause=by_cause, samples=samples, models=_models(client, db, lot, trail),
        verification=verification, decisions_audited=len(decisions), overrides=overrides,
        challenges=lot_challenges(client, db, lot), **recipe_sections(client, db, lot),
        review=review, review_note=review_note,
    )


def _models(client: ClickHouseClient, db: str, lot: str, trail: AuditTrail) -> list[ModelRelease]:
    used = client.query(
        f"""SELECT model_name, model_version, count() AS n FROM {db}.inspections FINAL
            WHERE lot = {{lot:String}} AND purpose = '' AND model_version != '' GROUP BY model_name, model_version
            ORDER BY model_name, model_version""",
        {"lot": lot},
    ).rows
    releases = trail.store.by_action("model.deploy") + trail.store.by_action("model.rollback")
    sigs = trail.store.by_action(SIGN_ACTION)
    report = trail.verify(chain=SYSTEM_CHAIN) if releases else VerifyReport()
    valid = {s.signature_id: s for s in report.signatures}
    out = []
    for name, version, n in used:
        mine = sorted((r for r in releases if r.subject == name and r.new_value == str(version)), key=lambda r: r.time)
        last = mine[-1] if mine else None
        signatures = []
        if last is not None:
            for s in sigs:
                if s.subject == last.record_id:
                    check = valid.get(s.record_id)
                    state = "valid" if check is not None and check.valid else f"INVALID ({check.why if check else '?'})"
                    signatures.append(f"{s.new_value} by {s.user} ({s.role}) {s.time:%Y-%m-%d %H:%M} UTC: {state}")
        out.append(ModelRelease(
            str(name), str(version), int(n), last.record_id if last else "",
            f"{last.user} ({last.role})" if last else "", f"{last.time:%Y-%m-%d %H:%M:%S} UTC" if last else "",
            signatures,
        ))
    return out


# ----------------------------------------------------------------------------- HTML

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Batch record {{ r.lot }}</title>
<style>
body { font-family: sans-serif; margin: 2em; color: #222; } h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: .4em 0; } td, th { border: 1px solid #bbb; padding: 3px 8px; text-align: left; }
th { background: #eee; } .ok { color: #060; font-weight: bold; } .bad { color: #a00; font-weight: bold; } .mono { font-family: monospace; font-size: .85em; }
</style></head><body>
<h1>Batch record &mdash; lot {{ r.lot }}</h1>
<p>Generated {{ r.generated.strftime('%Y-%m-%d %H:%M:%S') }} UTC by LineSight.</p>
<p id="release" class="{{ 'bad' if r.release_refusals else 'ok' }}">{{ 'RELEASE REFUSED: ' ~ (r.release_refusals | join('; ')) if r.release_refusals else 'Challenge runs passed; every review unit decided' }}</p>
{% for f in r.flags %}<p class="bad flag">FLAGGED: {{ f }}</p>{% endfor %}
<h2 id="challenges">Challenge runs (challenge units, not counted as production)</h2><table><tr><th>when</th><th>result</th><th>line</th><th>recipe</th><th>set sha256</th><th>defects rejected</th><th>good removed</th><th>good in review</th><th>by</th><th>finished (UTC)</th><th>audit record</th><th>signature</th><th>failures</th></tr>
{% for c in r.challenges %}{% if c.run %}<tr><td>{{ c.phase }}</td><td class="{{ 'ok' if c.passed else 'bad' }}">{{ 'passed' if c.passed else 'FAILED' }}</td><td>{{ c.run.line }}</td><td>{{ c.run.recipe }}</td><td class="mono">{{ c.run.set_sha256[:16] }}</td><td>{{ c.run.defects_rejected }}/{{ c.run.defects }}</td><td>{{ c.run.good_removed }}/{{ c.run.good }}</td><td>{{ c.run.good_review }}/{{ c.run.good }}</td><td>{{ c.run.user }}</td><td>{{ c.run.finished_time.strftime('%Y-%m-%d %H:%M:%S') }}</td><td class="mono">{{ c.run.audit_record }}</td><td class="mono">{{ c.run.signature }}</td><td>{{ c.run.failures | join('; ') or 'none' }}</td></tr>
{% else %}<tr><td>{{ c.phase }}</td><td class="bad" colspan="12">MISSING</td></tr>{% endif %}{% endfor %}</table>
{% if r.review %}{% set v = r.review %}<h2 id="review">Review units (decided by a person)</h2>
<table><tr><th>review units</th><th>share of the lot</th><th>limit</th><th>undecided</th><th>awaiting QA</th><th>recovered (good)</th><th>confirmed defective</th><th>kept rejected</th></tr>
<tr><td>{{ v.review_units }} of {{ v.units }}</td><td class="{{ 'bad' if v.over_limit else '' }}">{{ '%.2f' % (100 * v.review_fraction) }} %</td><td>{{ '%.2f' % (100 * v.max_review_fraction) }} %</td><td class="{{ 'bad' if v.counts.undecided else '' }}">{{ v.counts.undecided }}</td><td>{{ v.counts.awaiting_qa }}</td><td>{{ v.counts.recovered }}</td><td>{{ v.counts.confirmed_defective }}</td><td>{{ v.counts.kept_rejected }}</td></tr></table>
{% if v.plan %}<p>Sample of the recovered units: {{ v.plan.describe() }}.
{% if v.sample %}Result: {{ v.sample.defective }} defective in {{ v.sample.sample_size }}: <span class="{{ 'ok' if v.sample.accepted else 'bad' }}">{{ 'ACCEPTED' if v.sample.accepted else 'REJECTED' }}</span> by {{ v.sample.user }} ({{ v.sample.audit_record }}, signed {{ v.sample.signature }}).{% else %}<span class="bad">Not yet sampled.</span>{% endif %}</p>{% endif %}
{% if r.review_note %}<p class="bad">{{ r.review_note }}</p>{% endif %}{% endif %}
<h2>Yield</h2>
<table><tr><th>units captured</th><td>{{ r.captured }}</td></tr>
<tr><th>inspected, passed</th><td>{{ rec.total('inspected_passed') }}</td></tr>
<tr><th>yield</th><td>{{ '%.2f' % r.yield_pct }} %</td></tr>
<tr><th>every unit accounted for</th><td class="{{ 'ok' if rec.every_unit_accounted else 'bad' }}">{{ 'yes' if rec.every_unit_accounted else 'NO' }} (unaccounted {{ rec.total('unaccounted') }})</td></tr></table>
{% set stationed = rec.lines | selectattr('stations') | list %}{% if stationed %}<h2>Stations</h2><table><tr><th>line</th><th>station</th><th>frames judged</th><th>passed</th><th>rejected</th><th>review</th><th>units without its verdict</th></tr>
{% for ln in stationed %}{% for c in ln.stations %}<tr><td>{{ ln.line }}</td><td>{{ c.station }}</td><td>{{ c.judged }}</td><td>{{ c.passed }}</td><td>{{ c.rejected }}</td><td>{{ c.review }}</td><td>{{ c.missing }}</td></tr>{% endfor %}{% endfor %}</table>{% endif %}
<h2>Rejects by cause</h2><table><tr><th>cause</th><th>units</th></tr>
{% for c, n in r.rejects_by_cause %}<tr><td>{{ c }}</td><td>{{ n }}</td></tr>{% endfor %}</table>
<h2>Rejects by defect class (model verdicts reject/review, fail-safe: uninspected)</h2><table><tr><th>class</th><th>units</th></tr>
{% for c, n in r.rejects_by_class %}<tr><td>{{ c }}</td><td>{{ n }}</td></tr>{% else %}<tr><td colspan="2">none</td></tr>{% endfor %}</table>
{% if r.recipes %}<h2>Recipes and measurements</h2><table><tr><th>recipe</th><th>units judged</th></tr>
{% for c, n in r.recipes %}<tr><td>{{ c }}</td><td>{{ n }}</td></tr>{% endfor %}</table>
<table><tr><th>measurement</th><th>units</th><th>mean</th><th>min</th><th>p05</th><th>p95</th><th>max</th></tr>
{% for m in r.measurements %}<tr><td>{{ m.name }}</td><td>{{ m.n }}</td>{% for k in ('mean', 'min', 'p05', 'p95', 'max') %}<td>{{ '%.3f' % m[k] }}</td>{% endfor %}</tr>
{% else %}<tr><td colspan="7">none</td></tr>{% endfor %}</table>
<p class="{{ 'bad' if r.duplicate_serials else 'ok' }}">Serial numbers seen on more than one unit: {{ r.duplicate_serials | length }}</p>
{% if r.duplicate_serials %}<table><tr><th>serial</th><th>units</th></tr>{% for d in r.duplicate_serials %}<tr><td class="mono">{{ d.serial }}</td><td>{{ d.units | join(', ') }}</td></tr>{% endfor %}</table>{% endif %}{% endif %}
<h2>Sample rejected units</h2><p>{{ images_note }}</p>
<table><tr><th>unit</th><th>verdict</th><th>cause</th><th>class</th><th>score</th><th>model</th><th>image sha256</th><th>audit record</th></tr>
{% for s in r.samples %}<tr><td>{{ s.unit_id }}</td><td>{{ s.verdict }}</td><td>{{ s.cause }}</td><td>{{ s.defect }}</td>
<td>{{ '%.3f' % s.score if s.score is not none else '-' }}</td><td>v{{ s.model_version or '-' }}</td><td class="mono">{{ s.image_sha256[:16] or '-' }}</td><td class="mono">{{ s.audit_record }}</td></tr>
{% else %}<tr><td colspan="8">no rejected units</td></tr>{% endfor %}</table>
<div>{% for s in r.samples if s.jpeg %}<figure style="display:inline-block;margin:4px;text-align:center;font-size:.8em">
<img alt="unit {{ s.unit_id }}" src="data:image/jpeg;base64,{{ s.jpeg | b64 }}" width="110"><figcaption>{{ s.unit_id }}<br>{{ s.defect }} ({{ s.verdict }})</figcaption></figure>{% endfor %}</div>
<h2>Alarms during the lot</h2><table><tr><th>code</th><th>raised</th><th>cleared</th><th>reason</th></tr>
{% for a in rec.alarms %}<tr><td>{{ a.code }}</td><td>{{ a.raised.strftime('%Y-%m-%d %H:%M:%S') }}</td><td>{{ a.cleared.strftime('%Y-%m-%d %H:%M:%S') if a.cleared else 'STILL ACTIVE' }}</td><td>{{ a.reason }}</td></tr>
{% else %}<tr><td colspan="4">none</td></tr>{% endfor %}</table>
<h2>Model versions and their release signatures</h2><table><tr><th>model</th><th>version</th><th>units judged</th><th>release record</th><th>released by</th><th>signatures</th></tr>
{% for m in r.models %}<tr><td>{{ m.model }}</td><td>{{ m.version }}</td><td>{{ m.units }}</td><td class="mono">{{ m.release or 'no release record in the audit trail' }}</td><td>{{ m.released_by }} {{ m.released_at }}</td><td>{{ m.signatures | join('; ') or 'none' }}</td></tr>
{% else %}<tr><td colspan="6">no model verdicts</td></tr>{% endfor %}</table>
<h2>Audit trail verification</h2>
<p class="{{ 'ok' if r.verification.ok else 'bad' }}">{{ 'VERIFIED: every chain intact, every signature valid' if r.verification.ok else 'BROKEN' }}</p>
<p>Decisions of this lot in the audit trail: {{ r.decisions_audited }} of {{ r.inspected }} stored verdicts.</p>
<table><tr><th>chain</th><th>records</th><th>seals</th><th>head hash</th><th>state</th></tr>
{% for c in r.verification.chains %}<tr><td>{{ c.chain }}</td><td>{{ c.records }}</td><td>{{ c.seals }}</td><td class="mono">{{ c.head_hash[:16] }}</td><td class="{{ 'ok' if c.ok else 'bad' }}">{{ 'intact' if c.ok else c.broken.message }}</td></tr>{% endfor %}</table>
</body></html>
"""


def render_html(r: BatchRecord, path: Path) -> None:
    from jinja2 import Environment, select_autoescape

    env = Environment(autoescape=select_autoescape(default=True))
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    Path(path).write_text(
        env.from_string(_HTML).render(r=r, rec=r.reconciliation, images_note=IMAGES_NOTE), encoding="utf-8"
    )


# ----------------------------------------------------------------------------- PDF


def gallery(pdf: FPDF, samples: list[dict]) -> None:
    """Sample rejects' images in rows of six (aspect kept: labels and vials are not square), each
    captioned with unit, class and verdict; a row is as tall as its longest caption."""
    from PIL import Image

    size, gap, per_row = 27.0, 3.0, 6
    for start in range(0, len(samples), per_row):
        row = samples[start : start + per_row]
        if pdf.will_page_break(size + 14):
            pdf.add_page()
        x0, y0 = pdf.l_margin, pdf.get_y()
        bottom = y0 + size
        for i, s in enumerate(row):
            x = x0 + i * (size + gap)
            with Image.open(io.BytesIO(s["jpeg"])) as im:
                aspect = im.width / im.height if im.height else 1.0
            w, h = (size, size / aspect) if aspect >= 1 else (size * aspect, size)
            pdf.image(io.BytesIO(s["jpeg"]), x=x + (size - w) / 2, y=y0 + (size - h) / 2, w=w, h=h)
            pdf.set_xy(x, y0 + size + 0.5)
            pdf.set_font("Helvetica", "", 6)
            pdf.multi_cell(size, 3, latin(f"{s['unit_id']}\n{s['defect']} ({s['verdict']})"), align="C")
            bottom = max(bottom, pdf.get_y())
        pdf.set_xy(x0, bottom + 2)
    pdf.set_font("Helvetica", "", 9)


def render_pdf(r: BatchRecord, path: Path) -> None:

    doc = ReportPdf(f"Batch record {r.lot}", lambda page: (
        f"Lot {r.lot} - generated {r.generated:%Y-%m-%d %H:%M:%S} UTC - page {page}/{{nb}}"))
    pdf, h1, h2, para, table = doc.pdf, doc.h1, doc.h2, doc.para, doc.table
    rec = r.reconciliation

    h1(f"Batch record - lot {r.lot}")
    para(f"Generated {r.generated:%Y-%m-%d %H:%M:%S} UTC by LineSight from the analytics store and the audit trail.")
    ok = r.verification.ok
    para(f"Audit trail: {'VERIFIED - every chain intact, every signature valid' if ok else 'BROKEN - see section 6'}",
         (0, 110, 0) if ok else (170, 0, 0), "B")
    accounted = rec.every_unit_accounted
    para(f"Every unit accounted for at the reject gate: {'yes' if accounted else 'NO'}",
         (0, 110, 0) if accounted else (170, 0, 0), "B")
    refused = r.release_refusals
    para("RELEASE REFUSED: " + "; ".join(refused) if refused else "Challenge runs passed; every review unit decided",
         (170, 0, 0) if refused else (0, 110, 0), "B")
    for flag in r.flags:
        para(f"FLAGGED: {flag}", (170, 0, 0), "B")
    h2("Challenge runs (challenge units, not counted as production)")
    table(["when", "result", "recipe", "defects rejected", "good removed", "good review", "by", "finished (UTC)",
           "audit record / signature"],
          [[c.phase, "passed" if c.passed else "FAILED", c.run["recipe"], f"{c.run['defects_rejected']}/{c.run['defects']}",
            f"{c.run['good_removed']}/{c.run['good']}", f"{c.run['good_review']}/{c.run['good']}", c.run["user"],
            f"{c.run['finished_time']:%Y-%m-%d %H:%M:%S}", f"{c.run['audit_record']} / {c.run['signature']}"]
           if c.run else [c.phase, "MISSING", "", "", "", "", "", "", ""] for c in r.challenges],
          (12, 16, 28, 16, 16, 16, 14, 30, 42))
    sets = [f"{c.phase}: {c.run['set_id']} (sha256 {c.run['set_sha256'][:16]})" for c in r.challenges if c.run]
    if sets:
        para("Challenge sets: " + "; ".join(sets))
    for c in r.challenges:
        if c.run and c.run["failures"]:
            para(f"{c.phase} challenge failures: " + "; ".join(c.run["failures"]), (170, 0, 0))

    if r.review is not None:
        v = r.review
        h2("Review units (decided by a person)")
        table(["review units", "share of lot", "limit", "undecided", "awaiting QA", "recovered", "confirmed defective",
               "kept rejected"],
              [[f"{v.review_units} of {v.units}", f"{100 * v.review_fraction:.2f} %", f"{100 * v.max_review_fraction:.2f} %",
                v.counts["undecided"], v.counts["awaiting_qa"], v.counts["recovered"], v.counts["confirmed_defective"],
                v.counts["kept_rejected"]]])
        if v.plan is not None:
            got = v.sample
            para(f"Sample of the recovered units: {v.plan.describe()}. " + (
                f"Result: {got['defective']} defective in {got['sample_size']}: "
                f"{'ACCEPTED' if got['accepted'] else 'REJECTED'} by {got['user']} ({got['audit_record']}, "
                f"signed {got['signature']})." if got else "Not yet sampled."))
        if r.review_note:
            para(r.review_note, (170, 0, 0))

    h2("1. Yield")
    table(["units captured", "inspected, passed", "rejected (all causes)", "unaccounted", "yield"],
          [[r.captured, rec.total("inspected_passed"),
            rec.total("inspected_rejected") + rec.total("failsafe_rejected"), rec.total("unaccounted"),
            f"{r.yield_pct:.2f} %"]])
    if len(rec.lines) > 1:
        table(["line", "captured", "passed", "rejected by model", "fail-safe rejected"],
              [[ln.line, ln.captured, ln.inspected_passed, ln.inspected_rejected, ln.failsafe_rejected]
               for ln in rec.lines])
    if any(ln.stations for ln in rec.lines):  # multi-station lines: each station on its own
        table(["line", "station", "frames judged", "passed", "rejected", "review", "units without it"],
              [[ln.line, c.station, c.judged, c.passed, c.rejected, c.review, c.missing]
               for ln in rec.lines for c in ln.stations])

    h2("2. Rejects by cause and by defect class")
    table(["cause", "units"], [[c, n] for c, n in r.rejects_by_cause], (130, 40))
    table(["defect class (stored verdicts reject/review)", "units"],
          [[c, n] for c, n in r.rejects_by_class] or [["none", 0]], (130, 40))
    if r.overrides:
        table(["operator override: unit", "by", "from", "to", "reason"],
              [[o["unit"], f"{o['user']} ({o['role']})", o["old_value"], o["new_value"], o["reason"]]
               for o in r.overrides], (40, 35, 20, 20, 75))

    if r.recipes:
        table(["recipe", "units judged"], [[c, n] for c, n in r.recipes], (130, 40))
        table(["measurement", "units", "mean", "min", "p05", "p95", "max"],
              [[m["name"], m["n"], *(f"{m[k]:.3f}" for k in ("mean", "min", "p05", "p95", "max"))]
               for m in r.measurements] or [["none", "", "", "", "", "", ""]], (50, 20, 20, 20, 20, 20, 20))
        para(f"Serial numbers seen on more than one unit: {len(r.duplicate_serials)}",
             (170, 0, 0) if r.duplicate_serials else (0, 110, 0), "B")
        if r.duplicate_serials:
            table(["serial", "units"], [[d["serial"], ", ".join(d["units"])] for d in r.duplicate_serials], (50, 120))

    h2("3. Sample rejected units")
    para(IMAGES_NOTE)
    table(["unit", "verdict", "cause", "class", "score", "model", "image sha256", "audit record"],
          [[s["unit_id"], s["verdict"], s["cause"], s["defect"],
            f"{s['score']:.3f}" if s["score"] is not None else "-",
            f"v{s['model_version']}" if s["model_version"] else "-",
            (s["image_sha256"] or "-")[:16], s["audit_record"]] for s in r.samples]
          or [["no rejected units", "", "", "", "", "", "", ""]],
          (28, 16, 16, 20, 13, 13, 33, 51))
    gallery(pdf, [s for s in r.samples if s.get("jpeg")])

    h2("4. Alarms during the lot")
    table(["code", "raised (UTC)", "cleared (UTC)", "reason"],
          [[a.code, f"{a.raised:%Y-%m-%d %H:%M:%S}", f"{a.cleared:%Y-%m-%d %H:%M:%S}" if a.cleared else "STILL ACTIVE",
            a.reason] for a in rec.alarms] or [["none", "", "", ""]], (35, 35, 35, 85))

    h2("5. Model versions and release signatures")
    table(["model", "version", "units", "release record", "released by", "electronic signatures"],
          [[m.model, m.version, m.units, m.release or "no release record", f"{m.released_by} {m.released_at}".strip(),
            "; ".join(m.signatures) or "none"] for m in r.models] or [["no model verdicts", "", "", "", "", ""]],
          (30, 14, 12, 30, 42, 62))

    h2("6. Audit trail verification")
    para(f"Decisions of this lot in the audit trail: {r.decisions_audited} of {r.inspected} stored verdicts.")
    table(["chain", "records", "seals", "last verified hash", "state"],
          [[c.chain, c.records, c.seals, c.head_hash[:16], "intact" if c.ok else c.broken.message]  # type: ignore[union-attr]
           for c in r.verification.chains] or [["no chains", "", "", "", ""]], (40, 16, 12, 32, 90))
    if r.verification.signatures:
        para(f"Signatures in the trail: {sum(s.valid for s in r.verification.signatures)} valid, "
             f"{sum(not s.valid for s in r.verification.signatures)} invalid.")
    pdf.output(str(path))
