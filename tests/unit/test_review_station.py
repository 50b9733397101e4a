"""The review station's HTTP side (docs/review.md): log-in needed, a lot's queue and summary as
JSON, each station's kept frame and its heat map, QA's sample of the recovered units, the
false-reject Pareto; the browser test (tests/e2e/test_review_station_browser.py) drives the page."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_site import Site, call, login, make_site, opener
from PIL import Image
from review_lot import BOTTOM_SOURCE, LOT, bottom_frame, seed_review_lot

from pipeline.auth.users import UserStore
from pipeline.clickhouse import ChdbClient
from pipeline.dashboard.localize import Localizer
from pipeline.review.frames import FrameUnavailable
from pipeline.settings import Settings


@pytest.fixture()
def site(chdb_client: ChdbClient, embedded_settings: Settings, tmp_path: Path) -> Iterator[Site]:
    s, server = make_site(chdb_client, tmp_path)
    settings = embedded_settings.model_copy(update={
        "clickhouse": embedded_settings.clickhouse.model_copy(update={"database": s.db})})
    seed_review_lot(settings, chdb_client)
    UserStore(chdb_client, s.db).add("quinn", "qa", "quinn-pass-123", "test")
    try:
        yield s
    finally:
        server.stop()


class _Broker:
    """The dashboard's frame reader, over a dict (the broker's side is tests/e2e/test_review_frames_broker.py)."""

    def __init__(self, kept: dict[str, bytes]) -> None:
        self.kept = kept

    def read(self, source: str, sha256: str) -> bytes:
        if source not in self.kept:
            raise FrameUnavailable("past retention")
        assert hashlib.sha256(self.kept[source]).hexdigest() == sha256
        return self.kept[source]

    def close(self) -> None:
        self.kept = {}


def _json(op, url: str, data: dict | None = None) -> tuple[int, dict]:  # noqa: ANN001
    status, _, text = call(op, url, data, {"Accept": "application/json"})
    return status, json.loads(text) if text.strip().startswith("{") else {"text": text}


def test_queue_frames_and_heat_map(site: Site) -> None:
    url = site.url + f"api/review/{urllib.parse.quote(LOT)}"
    assert call(opener(), url)[0] == 401
    op, _ = login(site)
    status, data = _json(op, url)
    assert status == 200 and [u["unit_id"] for u in data["units"]] == ["u2", "u4", "m1"]
    assert data["summary"]["counts"]["undecided"] == 3 and data["summary"]["over_limit"] is True
    assert data["summary"]["release_refusals"] == ["3 review unit(s) undecided"]
    status, lots = _json(op, site.url + "api/review/lots")
    assert status == 200 and {row["lot"] for row in lots["lots"]} == {LOT, "LOT-R-2"}

    status, _, _ = call(op, site.url + "review/frames/m1/top")
    assert status == 200
    with op.open(site.url + "review/frames/m1/top", timeout=10) as r:
        assert r.headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(r.read())).size == (160, 160)
    # It passed there: no JPEG kept; read back from the broker by its source, checked by its hash.
    status, _, text = call(op, site.url + "review/frames/m1/bottom")
    assert status == 404 and "no broker" in text
    assert site.dash is not None
    site.dash.frames = _Broker({BOTTOM_SOURCE: bottom_frame()})  # type: ignore[assignment]
    with op.open(site.url + "review/frames/m1/bottom", timeout=10) as r:
        assert r.headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(r.read())).size == (160, 160)
    site.dash.frames = _Broker({})  # type: ignore[assignment]
    status, _, text = call(op, site.url + "review/frames/m1/bottom")
    assert status == 404 and "frame unavailable: past retention" in text
    assert call(op, site.url + "review/frames/u2/-")[0] == 200  # a one-camera unit
    heat = site.url + "review/frames/u2/-/heatmap.png?product=tablet-round-white-10mm"
    status, _, text = call(op, heat)
    assert status == 503 and "Triton" in text
    assert site.dash is not None
    site.dash.localizer = Localizer(lambda product: (lambda images: [0.9] + [0.9 - 0.8 * (k == 7)
                                                                              for k in range(len(images) - 1)]), grid=6)
    with op.open(heat, timeout=10) as r:
        assert r.headers["Content-Type"] == "image/png" and Image.open(io.BytesIO(r.read())).size == (160, 160)


def test_sample_by_qa_and_the_false_reject_pareto(site: Site) -> None:
    op, csrf = login(site)
    base = site.url + f"api/review/{urllib.parse.quote(LOT)}"
    for unit, decision, defect in (("u2", "good", ""), ("u4", "good", ""), ("m1", "defect", "chip")):
        status, body = _json(op, f"{base}/units/{unit}/decision",
                             {"csrf": csrf, "decision": decision, "defect": defect, "password": "olga-pass-123",
                              "seconds_spent": "4.2"})
        assert status == 200 and body["signature"].startswith("system#"), body
    status, body = _json(op, f"{base}/sample", {"csrf": csrf, "defective": "0", "password": "olga-pass-123"})
    assert status == 403 and "may not review.sample" in body["refused"]  # an operator
    qa, qa_csrf = login(site, "quinn", "quinn-pass-123")
    assert _json(qa, f"{base}/sample", {"csrf": qa_csrf, "defective": "x", "password": "quinn-pass-123"})[0] == 400
    status, body = _json(qa, f"{base}/sample", {"csrf": qa_csrf, "defective": "0", "password": "quinn-pass-123"})
    assert status == 200 and body["accepted"] is True and body["release_refusals"] == []

    status, pareto = _json(op, site.url + "api/review/false-rejects?by=defect")
    assert status == 200 and pareto["total"] == 2
    assert [(b["key"], b["units"]) for b in pareto["bars"]] == [("chip", 1), ("crack", 1)]
    assert pareto["bars"][-1]["cumulative"] == pytest.approx(1.0)
    assert {u["unit_id"] for u in pareto["units"]} == {"u2", "u4"}
    assert call(op, site.url + "api/review/false-rejects?by=password")[0] == 400
    seconds = site.client.query(f"SELECT seconds_spent FROM {site.db}.review_decisions FINAL WHERE unit_id = 'u2'")
    assert seconds.scalar() == pytest.approx(4.2)
