"""A lot with review units in the analytics store, as the worker, the actuator and the sink leave
it: one-camera units (pass, review, reject), another lot's review unit, and a two-station unit
whose top face went to review. Shared by the review desk's tests and the review station's
browser test."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import uuid
from functools import cache

import numpy as np
from support import Msg

from pipeline.analytics.sink import ClickHouseSink
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal
from pipeline.auth.sessions import SessionStore
from pipeline.auth.users import UserStore
from pipeline.clickhouse import ChdbClient
from pipeline.recipes.schema import ReviewSpec
from pipeline.review.desk import ReviewDesk
from pipeline.settings import Settings
from pipeline.wire.messages import (
    H_CAPTURE_NS,
    H_DEFECT,
    H_LINE,
    H_LOT,
    H_STATION,
    H_UNIT,
    H_VERDICT,
    InspectionResult,
    UnitVerdict,
)

S = 1_000_000_000
T0 = 1_780_000_000 * S
LOT = "LOT-R-1"
PASSWORDS = {"otto": "otto-pass-123", "quinn": "quinn-pass-123", "adam": "adam-pass-123"}
_OFFSETS = itertools.count(1000)


@cache
def frame_jpeg(defect: str, seed: int) -> bytes:
    """A rendered tablet frame, reduced as the worker keeps it (streams.processor)."""
    from pipeline.imaging.tablets import render_tablet
    from pipeline.wire.codec import encode_png, thumbnail_jpeg

    image = render_tablet(np.random.default_rng(seed), "tablet-round-white-10mm", defect, size=160)
    jpeg = thumbnail_jpeg(encode_png(image), 160)
    assert jpeg is not None
    return jpeg


BOTTOM_SOURCE = "linesight.frames:0:42"  # where m1's bottom frame sits on the broker


@cache
def bottom_frame() -> bytes:
    """m1's bottom-station frame as the camera sent it (PNG)."""
    from pipeline.imaging.tablets import render_tablet
    from pipeline.wire.codec import encode_png

    return encode_png(render_tablet(np.random.default_rng(77), "tablet-round-white-10mm", None, size=160))


def _image(settings: Settings, unit: str, lot: str, station: str, verdict: str, defect: str, t: int, seed: int) -> Msg:
    headers = [(H_UNIT, unit.encode()), (H_LINE, b"line-1"), (H_LOT, lot.encode()), (H_CAPTURE_NS, str(t).encode()),
               (H_VERDICT, verdict.encode()), (H_DEFECT, defect.encode())]
    if station:
        headers.append((H_STATION, station.encode()))
    return Msg(settings.kafka.topic_reject_images, frame_jpeg(defect, seed), next(_OFFSETS), headers)


def _result(unit: str, lot: str, verdict: str, defect: str, score: float, t: int, station: str = "") -> InspectionResult:
    return InspectionResult(
        unit_id=unit, line="line-1", camera=f"cam-{station}" if station else "c", product="tablet-round-white-10mm",
        lot=lot, verdict=verdict, cause="model", inspected=True, defect=defect, score=score,  # type: ignore[arg-type]
        threshold=0.7, review_threshold=0.5, model_name="tablet_classifier", model_version="2", capture_ns=t,
        received_ns=t, inferred_ns=t + S // 50, worker="w1", image_sha256=hashlib.sha256(unit.encode()).hexdigest(),
        class_scores={"good": 1 - score, "crack": score * 0.7, "chip": score * 0.3}, station=station,
        reasons=[] if verdict == "pass" else [f"{defect} score {score:.2f} in the grey zone" if verdict == "review"
                                              else f"{defect} score {score:.2f} above the reject threshold"],
    )


def seed_review_lot(settings: Settings, client: ChdbClient) -> None:
    """u1, u6 passed; u2, u4 review; u3 reject; v1 review in LOT-R-2; m1 two stations, top in review."""
    k, msgs = settings.kafka, list[Msg]()
    plan = [("u1", LOT, "pass", "none", 0.1), ("u2", LOT, "review", "crack", 0.6), ("u3", LOT, "reject", "crack", 0.9),
            ("u4", LOT, "review", "chip", 0.55), ("v1", "LOT-R-2", "review", "crack", 0.6),
            ("u6", LOT, "pass", "none", 0.2)]
    for i, (unit, lot, verdict, defect, score) in enumerate(plan):
        t = T0 + i * S // 10
        msgs.append(Msg(k.topic_results, _result(unit, lot, verdict, defect, score, t).to_json(), next(_OFFSETS)))
        if verdict != "pass":
            msgs.append(_image(settings, unit, lot, "", verdict, defect, t, i))
    t = T0 + S
    for station, verdict, defect, score in (("top", "review", "chip", 0.58), ("bottom", "pass", "none", 0.1)):
        r = _result("m1", LOT, verdict, defect, score, t, station)
        if station == "bottom":  # it passed there: no JPEG kept, the frame is on the broker
            r = dataclasses.replace(r, frame_source=BOTTOM_SOURCE, image_sha256=hashlib.sha256(bottom_frame()).hexdigest())
        msgs.append(Msg(k.topic_results, r.to_json(), next(_OFFSETS)))
    msgs.append(_image(settings, "m1", LOT, "top", "review", "chip", t, 9))
    uv = UnitVerdict("m1", "line-1", LOT, "tablet-round-white-10mm", "review", "model", t + S, [
        {"station": "top", "verdict": "review", "score": 0.58, "defect": "chip", "model_version": "2", "camera": "cam-top"},
        {"station": "bottom", "verdict": "pass", "score": 0.1, "defect": "none", "model_version": "2",
         "camera": "cam-bottom"}])
    msgs.append(Msg(k.topic_unit_verdicts, uv.to_json(), next(_OFFSETS)))
    ClickHouseSink(settings, client).write(msgs)  # type: ignore[arg-type]


OTTO, QUINN, ADAM = Principal("otto", "operator"), Principal("quinn", "qa"), Principal("adam", "admin")


def review_desk(embedded_settings: Settings, client: ChdbClient, prefix: str) -> tuple[ReviewDesk, Settings]:
    """A fresh database holding the seeded lot, users otto (operator), quinn (qa) and adam (admin),
    and the desk that records their decisions (default [review] rules)."""
    db = f"{prefix}_{uuid.uuid4().hex[:8]}"
    client.apply_schema(db)
    settings = embedded_settings.model_copy(update={
        "clickhouse": embedded_settings.clickhouse.model_copy(update={"database": db})})
    seed_review_lot(settings, client)
    trail = AuditTrail.from_settings(settings, client)
    users = UserStore(client, db)
    for who in (OTTO, QUINN, ADAM):
        users.add(who.username, who.role, PASSWORDS[who.username], "test")
    guard = Guard(users, SessionStore(client, db), trail, 60)
    return ReviewDesk(client, db, trail, guard, lambda ref: ReviewSpec()), settings
