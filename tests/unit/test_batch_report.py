"""The batch record (PDF and HTML) of a lot: yield, rejects by class and cause, sample rejects,
alarms, model versions with their release signatures, and the audit verification result, which
turns to BROKEN when a decision record of the lot is edited in the table."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, needs_chromium
from report_pages import assert_readable, pdf_pages
from support import Msg

from pipeline.analytics.batch_record import build_batch_record, render_html, render_pdf
from pipeline.analytics.sink import ClickHouseSink
from pipeline.audit.record import AuditEvent
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal
from pipeline.auth.sessions import SessionStore
from pipeline.auth.signatures import sign_record
from pipeline.auth.users import UserStore
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.settings import Settings
from pipeline.wire.messages import AlarmRecord, GateEventRecord, InspectionResult

S = 1_000_000_000




def _reject_image(topic: str, unit: str, line: str, lot: str, verdict: str, defect: str, t: int, offset: int) -> Msg:
    """What the worker publishes for a removed unit (streams.processor), from a rendered tablet."""
    from pipeline.imaging.tablets import render_tablet
    from pipeline.wire.codec import encode_png, thumbnail_jpeg
    from pipeline.wire.messages import H_CAPTURE_NS, H_DEFECT, H_LINE, H_LOT, H_UNIT, H_VERDICT

    image = render_tablet(np.random.default_rng(offset), "tablet-round-white-10mm", defect, size=160)
    jpeg = thumbnail_jpeg(encode_png(image), 128)
    assert jpeg is not None
    headers = [(H_UNIT, unit.encode()), (H_LINE, line.encode()), (H_LOT, lot.encode()),
               (H_CAPTURE_NS, str(t).encode()), (H_VERDICT, verdict.encode()), (H_DEFECT, defect.encode())]
    return Msg(topic, jpeg, offset, headers)


def _gate(unit: str, line: str, lot: str, outcome: str, cause: str, t: int, verdict: str) -> GateEventRecord:
    d = t + 2 * S
    return GateEventRecord(
        unit_id=unit, line=line, lot=lot, outcome=outcome, cause=cause, admitted=True, deadline_ns=d, fire_at_ns=d,
        cutoff_ns=d - S // 50, window_start_ns=d - S // 50, window_end_ns=d + S // 50, acted_ns=d, actuator="a",
        verdict_ns=t + S // 2 if verdict else None, fired_ns=d if outcome == "fired" else None, verdict=verdict,
        capture_ns=t,
    )


def _result(unit: str, line: str, lot: str, verdict: str, defect: str, t: int, cause: str = "model") -> InspectionResult:
    inspected = cause == "model"
    return InspectionResult(
        unit_id=unit, line=line, camera="c", product="p", lot=lot, verdict=verdict, cause=cause,  # type: ignore[arg-type]
        inspected=inspected, defect=defect, score=(0.9 if verdict != "pass" else 0.1) if inspected else None,
        threshold=0.5, model_name="tablet_classifier", model_version="2" if inspected else "", capture_ns=t,
        received_ns=t, inferred_ns=t + S // 2, worker="w1", image_sha256=hashlib.sha256(unit.encode()).hexdigest(),
    )


@pytest.fixture()
def lot_db(embedded_settings: Settings, chdb_client: ChdbClient) -> tuple[Settings, str]:
    db = f"batch_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    settings = embedded_settings.model_copy(update={
        "clickhouse": embedded_settings.clickhouse.model_copy(update={"database": db}),
    })
    lot, line, k, t0 = "LOT-2026-0042", "line-1", settings.kafka, 1_780_000_000 * S
    plan = [("u1", "pass", "none"), ("u2", "reject", "crack"), ("u3", "pass", "none"), ("u4", "reject", "chip"),
            ("u5", "review", "crack"), ("u6", "pass", "none"), ("u7", "reject", "uninspected"), ("u8", "pass", "none")]
    msgs: list[Msg] = []
    for i, (unit, verdict, defect) in enumerate(plan):
        t = t0 + i * S // 10
        cause = "failsafe" if defect == "uninspected" else "model"
        msgs.append(Msg(k.topic_results, _result(unit, line, lot, verdict, defect, t, cause).to_json(), len(msgs)))
        if verdict != "pass" and defect != "uninspected":
            msgs.append(_reject_image(k.topic_reject_images, unit, line, lot, verdict, defect, t, len(msgs)))
        outcome = "passed" if verdict == "pass" else "fired"
        action = "pass" if verdict == "pass" else "reject"
        msgs.append(Msg(k.topic_gate_events, _gate(unit, line, lot, outcome, cause, t, action).to_json(), len(msgs)))
    msgs.append(Msg(k.topic_alarms, AlarmRecord("a:plc:1", "plc_unreachable", False, t0 + S // 5, "no answer from the PLC",
                                                "a", cleared_ns=t0 + S // 2, clear_reason="PLC back").to_json(), len(msgs)))
    ClickHouseSink(settings, chdb_client).write(msgs)  # type: ignore[arg-type]

    # The model version that judged the lot was released and signed by QA.
    trail = AuditTrail.from_settings(settings, chdb_client)
    users = UserStore(chdb_client, db)
    users.add("quinn", "qa", "quinn-pass-1", "test")
    guard = Guard(users, SessionStore(chdb_client, db), trail, 60)
    quinn = Principal("quinn", "qa")
    deploy = trail.record(AuditEvent("model.deploy", subject="tablet_classifier", user="quinn", role="qa",
                                     old_value="1", new_value="2", reason="validated on lot 41"))
    sign_record(trail, guard, quinn, deploy.record_id, "approved", "release")
    trail.record(AuditEvent("unit.override", subject="u5", user="otto", role="operator", old_value="review",
                            new_value="reject", reason="visible chip on inspection"))
    return settings, lot


def _pdf_text(path: Path) -> str:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(path))
    return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))


def _pdf_images(path: Path) -> int:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    doc = pdfium.PdfDocument(str(path))
    return sum(
        1 for i in range(len(doc)) for obj in doc[i].get_objects() if obj.type == pdfium_c.FPDF_PAGEOBJ_IMAGE
    )


def test_batch_record_pdf_and_html(lot_db: tuple[Settings, str], chdb_client: ChdbClient, tmp_path: Path) -> None:
    settings, lot = lot_db
    db = settings.clickhouse.database
    trail = AuditTrail.from_settings(settings, chdb_client)
    record = build_batch_record(chdb_client, db, lot, trail)
    assert record.captured == 8 and record.reconciliation.total("inspected_passed") == 4
    assert record.yield_pct == pytest.approx(50.0)
    assert dict(record.rejects_by_class) == {"crack": 2, "chip": 1, "uninspected": 1}
    causes = dict(record.rejects_by_cause)
    assert causes["model (reject or review verdict)"] == 3 and causes["operator override"] == 1
    assert causes["fail-safe: not inspectable / pipeline unhealthy"] == 1
    assert [s["unit_id"] for s in record.samples] == ["u2", "u4", "u5", "u7"]
    assert record.samples[0]["image_sha256"] == hashlib.sha256(b"u2").hexdigest()
    assert record.decisions_audited == 8 and record.verification.ok
    (model,) = record.models
    assert (model.model, model.version, model.units) == ("tablet_classifier", "2", 7)
    assert model.signatures and model.signatures[0].startswith("approved by quinn (qa)") and "valid" in model.signatures[0]

    pdf, html = tmp_path / "lot.pdf", tmp_path / "lot.html"
    render_pdf(record, pdf)
    render_html(record, html)
    # As QA reads it: every figure on the rendered pages, nothing running off them.
    assert_readable(pdf_pages(pdf, tmp_path / "pages"), (
        f"Batch record - lot {lot}", "50.00 %", "crack", "operator override", "plc_unreachable",
        "approved by quinn (qa)", "VERIFIED", "reduced JPEG kept of each removed unit", "u7", "u2", "u4", "u5",
        "tablet_classifier", "Review units (decided by a person)", "1 of 8", "12.50 %", "1 review unit(s) undecided",
        "FLAGGED: review rate 12.50 % of the lot is above the recipe's limit 2.00 %",
    ))
    # The removed units' images are in the record (u7 was never inspectable: no image).
    assert [s["unit_id"] for s in record.samples if s["jpeg"]] == ["u2", "u4", "u5"]
    assert _pdf_images(pdf) == 3
    page = html.read_text()
    assert "VERIFIED" in page and "approved by quinn (qa)" in page and "plc_unreachable" in page
    assert page.count('src="data:image/jpeg;base64,') == 3

    # An edited decision of the lot shows in the next report.
    chain = record.samples[0]["audit_record"].rpartition("#")[0]
    chdb_client.command(
        f"ALTER TABLE {db}.audit_records UPDATE new_value = 'pass' WHERE chain = '{chain}' AND subject = 'u2'",
        settings={"mutations_sync": 2},
    )
    broken = build_batch_record(chdb_client, db, lot, trail)
    assert not broken.verification.ok
    render_pdf(broken, tmp_path / "broken.pdf")
    assert "BROKEN" in _pdf_text(tmp_path / "broken.pdf") and "was changed" in _pdf_text(tmp_path / "broken.pdf")


def test_report_batch_cli_writes_pdf(
    lot_db: tuple[Settings, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, lot = lot_db
    monkeypatch.setenv("LINESIGHT_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LINESIGHT_CLICKHOUSE__DATABASE", settings.clickhouse.database)
    monkeypatch.delenv("LINESIGHT_CLICKHOUSE__URL", raising=False)
    pdf, html = tmp_path / "cli.pdf", tmp_path / "cli.html"
    assert main(["report", "batch", lot, "--pdf", str(pdf), "--html", str(html)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF") and html.is_file()
    assert "every unit accounted for: OK" in capsys.readouterr().out


@needs_chromium
def test_batch_record_html_as_a_browser_shows_it(
    lot_db: tuple[Settings, str], chdb_client: ChdbClient, tmp_path: Path
) -> None:
    """The HTML record opened in Chromium at an office screen's width: the figures are on the page,
    nothing is wider than the window, every unit photograph loaded; a screenshot is kept."""
    settings, lot = lot_db
    record = build_batch_record(chdb_client, settings.clickhouse.database, lot,
                                AuditTrail.from_settings(settings, chdb_client))
    html = tmp_path / "lot.html"
    render_html(record, html)
    shots = Path(os.environ.get("LINESIGHT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with chromium(width=1280, height=900) as driver:
        driver.get(html.as_uri())
        text = driver.execute_script("return document.body.innerText")
        for needed in (f"Batch record \u2014 lot {lot}", "50.00 %", "operator override", "plc_unreachable",
                       "approved by quinn (qa)", "VERIFIED", "RELEASE REFUSED"):
            assert needed in text, needed
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), (
            "the record is wider than the window")
        loaded = driver.execute_script(
            "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
        assert loaded == 3
        driver.save_screenshot(str(shots / "batch-record-html.png"))
