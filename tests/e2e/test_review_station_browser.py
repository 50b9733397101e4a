"""The review station as a person uses it, in headless Chromium: log in, choose the lot, see its
review units, open one (every station's frame), sign a decision with the password, see the lot's
release still refused while a unit is undecided; then, as an adversary would, forged and replayed
decisions over HTTP (no session, a forged CSRF token, a decided unit again, a machine reject,
another lot's unit, a role that may not decide): each 403 and in the audit trail. Screenshots go
to ``$LINESIGHT_SCREENSHOTS`` (default: the test's tmp dir)."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest
from browser import chromium, needs_chromium, wait_for
from dashboard_site import call, login, make_site, opener
from review_lot import LOT, seed_review_lot

from pipeline.analytics.batch_record import lot_release_refusals
from pipeline.clickhouse import ChdbClient
from pipeline.settings import Settings

pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

pytestmark = needs_chromium


def _row_status(driver, unit: str) -> str:  # noqa: ANN001
    return str(driver.find_element(By.CSS_SELECTOR, f"#queue tr[data-unit='{unit}'] td.status").text)


def test_a_person_decides_review_units_and_forgeries_are_refused(
    chdb_client: ChdbClient, embedded_settings: Settings, tmp_path: Path
) -> None:
    shots = Path(os.environ.get("LINESIGHT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    site, server = make_site(chdb_client, tmp_path)
    settings = embedded_settings.model_copy(update={
        "clickhouse": embedded_settings.clickhouse.model_copy(update={"database": site.db})})
    seed_review_lot(settings, chdb_client)
    try:
        with chromium(width=1300, height=1400) as b:
            b.get(site.url)
            b.find_element(By.ID, "username").send_keys("olga")
            b.find_element(By.ID, "password").send_keys("olga-pass-123")
            b.find_element(By.ID, "login-submit").click()
            wait_for("the dashboard", lambda: b.find_elements(By.ID, "review-link"))
            b.find_element(By.ID, "review-link").click()
            wait_for("the lot list", lambda: len(Select(b.find_element(By.ID, "lot")).options) >= 3)
            Select(b.find_element(By.ID, "lot")).select_by_value(LOT)
            wait_for("the queue", lambda: len(b.find_elements(By.CSS_SELECTOR, "#queue tbody tr")) == 3)
            assert [r.get_attribute("data-unit") for r in b.find_elements(By.CSS_SELECTOR, "#queue tbody tr")] == [
                "u2", "u4", "m1"]  # the review units only: no passed unit, no machine reject, no other lot's unit
            assert "3 review unit(s) undecided" in b.find_element(By.ID, "release").text
            b.save_screenshot(str(shots / "review-queue.png"))

            # The two-station unit: the top face's frame and heat-map slot, the bottom face passed.
            b.find_element(By.CSS_SELECTOR, "#queue tr[data-unit='m1'] a.open").click()
            wait_for("m1's frames", lambda: len(b.find_elements(By.CSS_SELECTOR, "#frames figure")) == 2)
            wait_for("the top frame to load", lambda: b.execute_script(
                "const i = document.querySelector(\"#frames figure[data-station='top'] img.frame\");"
                "return i && i.complete && i.naturalWidth > 0"))
            # It passed there: no JPEG kept; this dashboard has no broker to read the frame back from.
            wait_for("the bottom frame's absence", lambda: "frame not available" in b.find_element(
                By.CSS_SELECTOR, "#frames figure[data-station='bottom']").text)
            assert "chip" in b.find_element(By.ID, "probs").text
            # A wrong password signs nothing.
            b.find_element(By.CSS_SELECTOR, "input[name=decision][value=defect]").click()
            Select(b.find_element(By.ID, "defect")).select_by_value("chip")
            b.find_element(By.ID, "sign-password").send_keys("not-my-password")
            b.find_element(By.ID, "decide-submit").click()
            wait_for("the refusal", lambda: "wrong password" in b.find_element(By.ID, "decide-result").text)
            b.find_element(By.CSS_SELECTOR, "input[name=decision][value=defect]").click()
            Select(b.find_element(By.ID, "defect")).select_by_value("chip")
            b.find_element(By.ID, "sign-password").send_keys("olga-pass-123")
            b.find_element(By.ID, "decide-submit").click()
            wait_for("the decision", lambda: "Recorded: defect" in b.find_element(By.ID, "decide-result").text)
            wait_for("m1 confirmed defective", lambda: _row_status(b, "m1") == "confirmed defective")

            b.find_element(By.CSS_SELECTOR, "#queue tr[data-unit='u2'] a.open").click()
            wait_for("u2's frame", lambda: b.execute_script(
                "const i = document.querySelector('#frames img.frame'); return i && i.complete && i.naturalWidth > 0"))
            b.find_element(By.CSS_SELECTOR, "input[name=decision][value=good]").click()
            b.find_element(By.ID, "comment").send_keys("glare on the score line, no crack")
            b.find_element(By.ID, "sign-password").send_keys("olga-pass-123")
            b.find_element(By.ID, "decide-submit").click()
            wait_for("u2 recovered", lambda: _row_status(b, "u2") == "recovered")
            wait_for("the release line", lambda: "1 review unit(s) undecided" in b.find_element(By.ID, "release").text)
            # u2, decided good, is a false reject: the Pareto by defect class shows it, with its unit.
            wait_for("the Pareto bar", lambda: b.find_elements(By.CSS_SELECTOR, "svg.pareto rect[data-key='crack']"))
            assert "u2" in b.find_element(By.ID, "pareto-units").text
            b.save_screenshot(str(shots / "review-decided.png"))
            # The Pareto's unit links open that unit with its frames.
            b.find_element(By.CSS_SELECTOR, "#pareto-units a.unit-link").click()
            wait_for("u2 opened from the Pareto", lambda: b.find_element(By.ID, "unit-id").text.lower().startswith("u2")
                     and b.find_elements(By.CSS_SELECTOR, "#frames img.frame"))

        db = site.db
        # The lot's batch record refuses its release while u4 is undecided.
        assert "1 review unit(s) undecided" in lot_release_refusals(chdb_client, db, LOT, None)
        decisions = chdb_client.query(
            f"SELECT unit_id, decision, defect, user FROM {db}.review_decisions FINAL ORDER BY unit_id").rows
        assert [tuple(r) for r in decisions] == [("m1", "defect", "chip", "olga"), ("u2", "good", "", "olga")]

        # Forged and replayed decisions, over HTTP: each refused (403) and audited.
        def post(op, unit: str, lot: str, csrf: str, password: str = "olga-pass-123"):  # noqa: ANN001, ANN202
            return call(op, site.url + f"api/review/{urllib.parse.quote(lot)}/units/{urllib.parse.quote(unit)}/decision",
                        {"csrf": csrf, "decision": "good", "password": password})

        before = _refused(chdb_client, db)
        assert post(opener(), "u4", LOT, "x")[0] == 403  # no session
        op, csrf = login(site)
        assert post(op, "u4", LOT, "0" * 64)[0] == 403  # forged CSRF token
        status, _, text = post(op, "u2", LOT, csrf)  # replayed: u2 is decided
        assert status == 403 and "already decided" in text
        status, _, text = post(op, "u3", LOT, csrf)
        assert status == 403 and "machine reject" in text
        status, _, text = post(op, "v1", LOT, csrf)
        assert status == 403 and "belongs to lot 'LOT-R-2'" in text
        admin, admin_csrf = login(site, "adam", "adam-pass-123")
        status, _, text = post(admin, "u4", LOT, admin_csrf, password="adam-pass-123")
        assert status == 403 and "may not review.decide" in text
        refused = _refused(chdb_client, db)[len(before):]
        assert len(refused) == 6, refused
        assert "without a session" in refused[0] and "CSRF" in refused[1] and "already decided" in refused[2]
        assert "machine reject" in refused[3] and "LOT-R-2" in refused[4] and "may not review.decide" in refused[5]
        assert int(chdb_client.query(f"SELECT count() FROM {db}.review_decisions").scalar()) == 2  # nothing more
    finally:
        server.stop()


def _refused(client: ChdbClient, db: str) -> list[str]:
    return [str(r[0]) for r in client.query(
        f"SELECT reason FROM {db}.audit_records WHERE action = 'access.refused' ORDER BY seq").rows]
