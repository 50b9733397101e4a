"""The dashboard as a person uses it, in headless Chromium (Debian `chromium` + `chromium-driver`):
log in, watch live numbers change while a simulated line runs, see an injected defect burst raise
an alert, acknowledge it, see a stopped line alerted. Screenshots go to
``$LINESIGHT_SCREENSHOTS`` (default: the test's tmp dir)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium, needs_chromium, wait_for
from dashboard_feed import SimulatedFeed
from dashboard_site import Site, audit_actions, make_site

from pipeline.clickhouse import ChdbClient

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
from selenium.webdriver.common.by import By  # noqa: E402

pytestmark = needs_chromium


@pytest.fixture()
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


def text_of(driver: webdriver.Chrome, css: str) -> str:
    """An element's text, read again when the live page re-rendered it between find and read."""
    return str(wait_for(css, lambda: driver.find_element(By.CSS_SELECTOR, css).text or " "))


def alert_rows(driver: webdriver.Chrome, kind: str) -> list:
    return driver.find_elements(By.CSS_SELECTOR, f"#alerts tbody tr[data-kind='{kind}']")


def test_operator_session_in_headless_chromium(
    browser: webdriver.Chrome, chdb_client: ChdbClient, tmp_path: Path
) -> None:
    shots = Path(os.environ.get("LINESIGHT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    site: Site
    site, server = make_site(chdb_client, tmp_path)
    feed = SimulatedFeed(site.engine, rate_per_s=10, defect_rate=0.1, seed=11).start()
    try:
        # unauthenticated: the page is the login form
        browser.get(site.url)
        assert browser.current_url.endswith("/login")
        browser.find_element(By.ID, "username").send_keys("olga")
        browser.find_element(By.ID, "password").send_keys("wrong-password")
        browser.find_element(By.ID, "login-submit").click()
        error = wait_for("the login error", lambda: browser.find_elements(By.ID, "login-error"))
        assert "wrong password" in error[0].text.lower()  # type: ignore[index]
        browser.find_element(By.ID, "username").send_keys("olga")
        browser.find_element(By.ID, "password").send_keys("olga-pass-123")
        browser.find_element(By.ID, "login-submit").click()
        wait_for("the live line card", lambda: browser.find_elements(By.CSS_SELECTOR, "[data-line='line-1'] .total"))
        first = int(text_of(browser, "[data-line='line-1'] .total"))
        # the numbers change without a reload (Server-Sent Events)
        wait_for("the unit count to grow", lambda: int(
            browser.find_element(By.CSS_SELECTOR, "[data-line='line-1'] .total").text) >= first + 10)
        assert "tablet_classifier:7" in text_of(browser, "[data-line='line-1'] .models")
        assert text_of(browser, "[data-service='clickhouse']") == "clickhouse: ok"
        wait_for("p-chart control limits", lambda: int(browser.find_element(
            By.CSS_SELECTOR, "svg.pchart").get_attribute("data-limited")) >= 3)
        browser.save_screenshot(str(shots / "dashboard-live.png"))

        # a defect burst raises the run alert on the page
        assert not alert_rows(browser, "reject_run")
        feed.inject_burst(12)
        wait_for("the reject_run alert", lambda: alert_rows(browser, "reject_run"))
        wait_for("a reject thumbnail", lambda: browser.find_elements(By.CSS_SELECTOR, ".rejects img"))
        browser.save_screenshot(str(shots / "dashboard-alert.png"))

        # acknowledging it takes it off the open list; the audit trail has it
        alert_id = wait_for("the alert id", lambda: alert_rows(browser, "reject_run")[0].get_attribute("data-id"))
        wait_for("the acknowledge click", lambda: alert_rows(browser, "reject_run")[0].find_element(
            By.CSS_SELECTOR, "button.ack").click() or True)
        wait_for("the alert to leave the open list", lambda: not any(
            r.find_elements(By.CSS_SELECTOR, "button.ack") for r in alert_rows(browser, "reject_run")))
        assert site.acked == [(alert_id, "olga")]
        assert ("alert.acknowledge", "olga", alert_id) in audit_actions(site)
        browser.save_screenshot(str(shots / "dashboard-acknowledged.png"))

        # a line that stops sending frames: alerted on the page, not a blank page
        feed.paused = True
        wait_for("the frames_missing alert", lambda: alert_rows(browser, "frames_missing"), timeout_s=10)
        assert "NO FRAMES" in text_of(browser, "[data-line='line-1'] h3")
        browser.save_screenshot(str(shots / "dashboard-line-stopped.png"))
        # a forged acknowledgement from the page's own origin without the token is refused
        status = browser.execute_script(
            "return fetch(arguments[0], {method: 'POST', body: new URLSearchParams({csrf: 'forged'})})"
            ".then(r => r.status)", f"/alerts/{alert_rows(browser, 'frames_missing')[0].get_attribute('data-id')}/ack")
        assert status == 403
    finally:
        feed.close()
        server.stop()


def test_camera_panel_in_headless_chromium(browser: webdriver.Chrome, chdb_client: ChdbClient, tmp_path: Path) -> None:
    """Each line card shows its station cameras (the gateway's camera status); a lost one stands
    out and its camera_lost alert is in the alert table."""
    import threading

    from pipeline.core.times import now_ns
    from pipeline.wire.messages import CameraStatus

    shots = Path(os.environ.get("LINESIGHT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    site, server = make_site(chdb_client, tmp_path)
    feed = SimulatedFeed(site.engine, rate_per_s=10, defect_rate=0.05, seed=3).start()
    stop = threading.Event()
    lost_at = now_ns() - 12_000_000_000

    def gateway() -> None:  # what the camera gateway sends, every 0.25 s
        n = 0
        while not stop.wait(0.25):
            n += 1
            t = now_ns()
            for status in (
                CameraStatus("line-1", "top", "LSDEMO-TOP-01", True, 400 + n * 2, 400 + n * 2, 9.9, 10.0, 1, 2, 0, 0,
                             t - 40_000_000, 100_000_000, 100_000_000, t),
                CameraStatus("line-1", "bottom", "LSDEMO-BOT-01", False, 310, 400 + n * 2, 0.0, 10.0, 0, 7 + n, 0, 1,
                             lost_at, 0, 0, t),
            ):
                site.engine.on_camera_status(status, t)

    pusher = threading.Thread(target=gateway, daemon=True)
    pusher.start()
    try:
        browser.get(site.url)
        browser.find_element(By.ID, "username").send_keys("olga")
        browser.find_element(By.ID, "password").send_keys("olga-pass-123")
        browser.find_element(By.ID, "login-submit").click()
        wait_for("the camera panel", lambda: browser.find_elements(By.CSS_SELECTOR, "table.cameras tr[data-station]"))
        top = "[data-line='line-1'] table.cameras tr[data-station='top']"
        bottom = "[data-line='line-1'] table.cameras tr[data-station='bottom']"
        assert "LSDEMO-TOP-01" in text_of(browser, top) and "connected" in text_of(browser, top + " td:nth-child(3)")
        assert text_of(browser, top + " .fps") == "9.9/s" and text_of(browser, top + " .drops") == "3"
        assert text_of(browser, bottom + " td:nth-child(3)") == "LOST"
        assert "s ago" in text_of(browser, bottom + " .last-frame") and text_of(browser, bottom + " .reconnects") == "1"
        assert "lost" in str(browser.find_element(By.CSS_SELECTOR, bottom).get_attribute("class"))
        wait_for("the camera_lost alert", lambda: alert_rows(browser, "camera_lost"))
        assert "bottom (LSDEMO-BOT-01) disconnected" in alert_rows(browser, "camera_lost")[0].text
        browser.save_screenshot(str(shots / "dashboard-cameras.png"))
    finally:
        stop.set()
        pusher.join(timeout=5)
        feed.close()
        server.stop()
