"""The review station (docs/review.md): a lot's review units with every station's frame, score,
class probabilities, heat map and reasons; a person decides each with an e-signature (password
re-entered per decision); QA records the sample of the recovered units; the false-reject Pareto.

Every state-changing request carries the session's CSRF token and comes from this host; anything
else, and every decision the review rules refuse (a machine reject, another lot's unit, a decided
unit, a role that may not decide, a wrong password), is answered 403 and recorded in the audit
trail (`pipeline.review.desk` records the rules' refusals; this module the forged requests).
"""

from __future__ import annotations

import asyncio
import html
import json
from typing import Any

from aiohttp import web

from pipeline.auth.guard import AccessDenied, Principal
from pipeline.dashboard.context import DASHBOARD_KEY, PRINCIPAL, TOKEN, Dashboard, csrf_ok, page
from pipeline.dashboard.localize import LocalizeUnavailable
from pipeline.review.desk import DECIDE, SAMPLE, ReviewDesk
from pipeline.review.frames import FrameUnavailable
from pipeline.review.store import find_unit, frame_jpeg
from pipeline.wire.codec import thumbnail_jpeg

# The dimensions of the false-reject Pareto (columns of the ``false_rejects`` view).
PARETO_BY = ("defect", "score_band", "station", "camera", "product", "hour", "line")
NO_STATION = "-"  # a one-camera unit's station ('') in a URL
REVIEW_FRAME_PX = 1024  # a frame read back from the broker, as the person sees it


def _desk(request: web.Request) -> ReviewDesk:
    desk = request.app[DASHBOARD_KEY].review
    if desk is None:
        raise web.HTTPServiceUnavailable(text="the review station is not configured on this dashboard\n")
    return desk


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


async def review_page(request: web.Request) -> web.Response:
    who: Principal = request[PRINCIPAL]
    csrf = request.app[DASHBOARD_KEY].csrf_for(request[TOKEN])
    body = (
        "<header><h1>LineSight review station</h1><a href='/' class=navlink>Live dashboard</a>"
        f"<span class=user id=who data-role='{html.escape(who.role)}'>{html.escape(who.username)} "
        f"({html.escape(who.role)})</span></header>"
        f"<input type=hidden id=csrf value='{csrf}'>"
        "<main class=review><section><h2>Lot</h2><select id=lot><option value=''>choose a lot…</option></select>"
        "<div id=summary class=summary></div></section>"
        "<section><h2>Review units</h2><table id=queue><thead><tr><th>Unit</th><th>Status</th><th>Machine</th>"
        "<th>Score</th><th>Stations</th><th>Captured</th></tr></thead><tbody></tbody></table>"
        "<p id=queue-empty class=muted>No lot chosen.</p></section>"
        "<section id=unit-panel hidden><h2>Unit <span id=unit-id></span></h2><div id=frames class=frames></div>"
        "<div class=unit-facts><table id=probs class=probs></table><ul id=reasons class=reasons></ul></div>"
        "<form id=decide-form class=decide autocomplete=off><fieldset><legend>Decision (e-signature)</legend>"
        "<label><input type=radio name=decision value=good> Good: return to the lot</label>"
        "<label><input type=radio name=decision value=defect> Defect: <select name=defect id=defect></select></label>"
        "<label><input type=radio name=decision value=cannot_decide> Cannot decide: stays rejected</label>"
        "<label>Comment <input name=comment id=comment maxlength=500></label>"
        "<label>Password (signs this decision) <input type=password name=password id=sign-password "
        "autocomplete=current-password required></label>"
        "<button type=submit id=decide-submit>Sign and record</button></fieldset>"
        "<p id=decide-result role=status></p></form>"
        "<div id=decisions></div></section>"
        "<section id=sample-panel hidden><h2>Sample of the recovered units (QA)</h2><p id=sample-plan></p>"
        "<form id=sample-form autocomplete=off><label>Defective units found in the sample "
        "<input type=number min=0 name=defective id=sample-defective required></label>"
        "<label>Password <input type=password name=password id=sample-password required></label>"
        "<button type=submit id=sample-submit>Sign and record</button><p id=sample-result role=status></p></form>"
        "</section>"
        "<section><h2>False-reject root causes</h2><label>By <select id=pareto-by>"
        + "".join(f"<option>{b}</option>" for b in PARETO_BY)
        + "</select></label><div id=pareto></div><table id=pareto-units><thead><tr><th>Unit</th><th>Lot</th>"
        "<th>Class</th><th>Score</th><th>Station</th><th>Decided by</th></tr></thead><tbody></tbody></table></section>"
        "</main><script src='/static/review.js'></script>"
    )
    return web.Response(text=page("LineSight review station", body), content_type="text/html")


async def api_lots(request: web.Request) -> web.Response:
    desk = _desk(request)
    rows = await asyncio.to_thread(lambda: desk.client.query(
        f"""SELECT lot, uniqExactIf(unit_id, verdict = 'review') AS review, uniqExact(unit_id) AS units,
                   max(capture_time) AS last
            FROM {desk.db}.inspections FINAL WHERE purpose = '' AND lot != ''
            GROUP BY lot HAVING review > 0 ORDER BY last DESC LIMIT 100""").named())
    return _json({"lots": rows})


async def api_queue(request: web.Request) -> web.Response:
    desk, lot = _desk(request), request.match_info["lot"]

    def load() -> dict[str, Any]:
        summary = desk.lot_summary(lot)
        rules = summary.rules
        units = [u.to_json(rules.qa_confirms) for u in summary.queue]
        plan = summary.plan
        return {"lot": lot, "units": units, "rules": rules.model_dump(), "summary": {
            "units": summary.units, "review_units": summary.review_units, "counts": summary.counts,
            "review_fraction": summary.review_fraction, "max_review_fraction": summary.max_review_fraction,
            "over_limit": summary.over_limit, "release_refusals": summary.release_refusals(),
            "plan": None if plan is None else {"describe": plan.describe(), "sample_size": plan.sample_size,
                                               "accept": plan.accept, "reject": plan.reject},
            "sample": summary.sample}}

    return _json(await asyncio.to_thread(load))


def _station(request: web.Request) -> str:
    station = request.match_info["station"]
    return "" if station == NO_STATION else station


def _station_frame(dash: Dashboard, desk: ReviewDesk, unit: str, station: str) -> bytes:
    """The kept JPEG of a station's frame, else the frame read back from the broker (checked
    against the judged image's hash); HTTP 404 saying why when neither can be had."""
    jpeg = frame_jpeg(desk.client, desk.db, unit, station)
    if jpeg is not None:
        return jpeg
    found = find_unit(desk.client, desk.db, unit)
    view = next((s for s in found.stations if s.station == station), None) if found else None
    if view is None or not view.frame_source:
        raise web.HTTPNotFound(text="no frame kept for this station of the unit\n")
    if dash.frames is None:
        raise web.HTTPNotFound(text="no frame kept for this station (it passed there) and no broker to read it from\n")
    try:
        data = dash.frames.read(view.frame_source, view.image_sha256)
    except FrameUnavailable as exc:
        raise web.HTTPNotFound(text=f"frame unavailable: {exc}\n") from None
    small = thumbnail_jpeg(data, REVIEW_FRAME_PX, quality=92)
    if small is None:
        raise web.HTTPUnprocessableEntity(text="the frame on the broker is not a decodable image\n")
    return small


async def frame(request: web.Request) -> web.Response:
    dash, desk, unit = request.app[DASHBOARD_KEY], _desk(request), request.match_info["unit"]
    jpeg = await asyncio.to_thread(_station_frame, dash, desk, unit, _station(request))
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


async def heatmap(request: web.Request) -> web.Response:
    """Where the model saw the defect on the station's frame (pipeline.dashboard.localize)."""
    dash, desk, unit = request.app[DASHBOARD_KEY], _desk(request), request.match_info["unit"]
    station = _station(request)
    if dash.localizer is None:
        raise web.HTTPServiceUnavailable(text="heat maps need the inference server (Triton)\n")
    jpeg = await asyncio.to_thread(_station_frame, dash, desk, unit, station)
    product = str(request.query.get("product", ""))
    try:
        png = await asyncio.to_thread(dash.localizer.overlay, f"{unit}/{station}", product, jpeg)
    except LocalizeUnavailable as exc:
        raise web.HTTPServiceUnavailable(text=f"heat map unavailable: {exc}\n") from None
    except ValueError as exc:
        raise web.HTTPUnprocessableEntity(text=f"heat map unavailable: {exc}\n") from None
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


async def _checked_form(request: web.Request, action: str, subject: str) -> dict[str, str]:
    """The POSTed form, refused (403, audited) without this session's CSRF token from this host."""
    dash, who = request.app[DASHBOARD_KEY], request[PRINCIPAL]
    form = {k: str(v) for k, v in (await request.post()).items()}
    if not csrf_ok(request, form.get("csrf", "") or request.headers.get("X-CSRF-Token", "")):
        await asyncio.to_thread(dash.guard.refuse, who.username, who.role, action, subject,
                                "request with a missing or forged CSRF token, or from another origin")
        raise web.HTTPForbidden(text="refused: bad CSRF token\n")
    return form


async def decide(request: web.Request) -> web.Response:
    desk, who = _desk(request), request[PRINCIPAL]
    lot, unit = request.match_info["lot"], request.match_info["unit"]
    form = await _checked_form(request, DECIDE, unit)
    try:
        seconds = float(form.get("seconds_spent", "0") or 0)
    except ValueError:
        seconds = 0.0
    try:
        done = await asyncio.to_thread(desk.decide, who, form.get("password", ""), lot, unit,
                                       form.get("decision", ""), form.get("defect", ""), seconds,
                                       form.get("comment", ""))
    except AccessDenied as exc:  # the desk's refusals and the guard's: already audited
        return _json({"refused": str(exc)}, status=403)
    return _json({"unit_id": unit, "decision": form.get("decision"), "audit_record": done.record.record_id,
                  "signature": done.signature.record_id})


async def sample(request: web.Request) -> web.Response:
    desk, who, lot = _desk(request), request[PRINCIPAL], request.match_info["lot"]
    form = await _checked_form(request, SAMPLE, lot)
    try:
        defective = int(form.get("defective", ""))
    except ValueError:
        return _json({"refused": "the number of defective units found is a whole number"}, status=400)
    try:
        done, summary = await asyncio.to_thread(desk.record_sample, who, form.get("password", ""), lot, defective,
                                                None, form.get("comment", ""))
    except AccessDenied as exc:
        return _json({"refused": str(exc)}, status=403)
    return _json({"accepted": done.record.new_value == "accepted", "audit_record": done.record.record_id,
                  "signature": done.signature.record_id, "release_refusals": summary.release_refusals()})


async def false_rejects(request: web.Request) -> web.Response:
    """The Pareto of good units removed, by one dimension of the ``false_rejects`` view."""
    desk = _desk(request)
    by = request.query.get("by", "defect")
    if by not in PARETO_BY:
        raise web.HTTPBadRequest(text=f"by: one of {', '.join(PARETO_BY)}\n")
    days = min(max(int(request.query.get("days", "30") or 30), 1), 3650)

    def load() -> dict[str, Any]:
        where = f"decided_time > now() - INTERVAL {days} DAY"
        bars = desk.client.query(
            f"SELECT toString({by}) AS key, count() AS units FROM {desk.db}.false_rejects WHERE {where} "
            "GROUP BY key ORDER BY units DESC, key").named()
        units = desk.client.query(
            f"""SELECT unit_id, lot, station, defect, score, decided_by, product FROM {desk.db}.false_rejects
                WHERE {where} ORDER BY decided_time DESC LIMIT 200""").named()
        total, running = sum(int(b["units"]) for b in bars), 0
        for b in bars:
            running += int(b["units"])
            b["cumulative"] = running / total if total else 0.0
        return {"by": by, "days": days, "total": total, "bars": bars, "units": units}

    return _json(await asyncio.to_thread(load))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/review", review_page)
    app.router.add_get("/api/review/lots", api_lots)
    app.router.add_get("/api/review/false-rejects", false_rejects)
    app.router.add_get("/api/review/{lot}", api_queue)
    app.router.add_get("/review/frames/{unit}/{station}", frame)
    app.router.add_get("/review/frames/{unit}/{station}/heatmap.png", heatmap)
    app.router.add_post("/api/review/{lot}/units/{unit}/decision", decide)
    app.router.add_post("/api/review/{lot}/sample", sample)
