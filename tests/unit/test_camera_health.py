"""Camera health: the gateway's `CameraStatus` (measured by `CameraStatusReporter`), the alert
detectors fed with it (camera_lost, camera_rate_drift, camera_timestamp_gap), the alert service
consuming its topic, and the dashboard's camera panel data (docs/cameras.md, "Alerts and dashboard")."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_site import Site, call, login, make_site
from support import Msg

from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.record import AlertRecord
from pipeline.alerts.service import AlertService, alert_config
from pipeline.clickhouse import ChdbClient
from pipeline.core.times import now_ns
from pipeline.gateway.camera_status import CameraStatusReporter
from pipeline.gateway.cameras import AcquiredFrame
from pipeline.gateway.service import CameraSide
from pipeline.gateway.tracking import StationStats, TrackerStats
from pipeline.gateway.triggers import CameraClock, EncoderClock, Trigger
from pipeline.settings import Settings
from pipeline.wire.messages import CameraStatus, MessageError

S = 1_000_000_000
MS = 1_000_000
T0 = 1_760_000_000 * S


def status(t_ns: int = T0, **kw: Any) -> CameraStatus:
    base: dict[str, Any] = dict(line="line-1", station="top", camera="CAM-TOP", connected=True, frames=0, units=0,
                                fps=10.0, units_per_s=10.0, incomplete=0, missing=0, unexpected=0, reconnects=0,
                                last_frame_ns=t_ns - 50 * MS, ts_gap_ns=100 * MS, expected_gap_ns=100 * MS,
                                sent_ns=t_ns)
    return CameraStatus(**(base | kw))


def active(engine: AlertEngine, kind: str) -> AlertRecord | None:
    return engine.book.active.get(("line-1", kind))


# -- the message ---------------------------------------------------------------------------------


def test_camera_status_round_trips_and_is_decoded_strictly() -> None:
    s = status(frames=41, units=42, missing=1, reconnects=2)
    assert CameraStatus.from_json(s.to_json()) == s
    doc = json.loads(s.to_json())
    for field, bad, why in [("connected", 1, "not a boolean"), ("frames", 2.5, "not an integer"),
                            ("fps", "fast", "not a number"), ("last_frame_ns", -1, "epoch-ns"),
                            ("camera", 7, "not a string")]:
        with pytest.raises(MessageError, match=why):
            CameraStatus.from_json(json.dumps(doc | {field: bad}))
    with pytest.raises(MessageError, match="misses connected"):
        CameraStatus.from_json(json.dumps({k: v for k, v in doc.items() if k != "connected"}))
    with pytest.raises(MessageError, match="not a finite number"):
        CameraStatus.from_json(json.dumps(doc | {"fps": float("nan")}))
    for field, bad, why in [("station", "Top Station", "not a station name"), ("camera", "", "without a camera"),
                            ("missing", -1, "missing -1 is negative"), ("line", " l1", "spaces")]:
        with pytest.raises(MessageError, match=why):
            CameraStatus.from_json(json.dumps(doc | {field: bad}))


# -- detectors -----------------------------------------------------------------------------------


def test_camera_lost_is_raised_on_the_disconnected_status_and_cleared_when_back() -> None:
    engine = AlertEngine()
    assert engine.on_camera_status(status(T0), T0) == []
    (raised,) = engine.on_camera_status(status(T0 + 300 * MS, connected=False), T0 + 300 * MS)
    assert (raised.kind, raised.state, raised.severity) == ("camera_lost", "active", "critical")
    assert raised.first_seen_ns == T0 + 300 * MS  # on the message itself, not at the next tick
    assert "top (CAM-TOP) disconnected" in raised.message
    assert engine.tick(T0 + 800 * MS) == []  # still lost: nothing new to publish
    (cleared,) = engine.on_camera_status(status(T0 + 2 * S, reconnects=1), T0 + 2 * S)
    assert (cleared.kind, cleared.state) == ("camera_lost", "cleared")


def test_a_silent_camera_status_is_a_lost_camera_after_a_second() -> None:
    engine = AlertEngine()
    engine.on_camera_status(status(T0), T0)
    assert [r for r in engine.tick(T0 + 900 * MS) if r.kind == "camera_lost"] == []
    raised = [r for r in engine.tick(T0 + 1100 * MS) if r.kind == "camera_lost"]
    assert raised and raised[0].state == "active" and "no status from the gateway for 1.1 s" in raised[0].message
    engine.on_camera_status(status(T0 + 1200 * MS), T0 + 1200 * MS)
    assert active(engine, "camera_lost") is None


def test_a_stopping_gateway_is_no_lost_camera() -> None:
    engine = AlertEngine()
    engine.on_camera_status(status(T0, connected=False), T0)
    (cleared,) = engine.on_camera_status(status(T0 + S, connected=False, running=False), T0 + S)
    assert (cleared.kind, cleared.state) == ("camera_lost", "cleared")
    assert [r for r in engine.tick(T0 + 10 * S) if r.kind.startswith("camera")] == []  # silence expected now
    assert engine.snapshot(T0 + 10 * S)["lines"][0]["cameras"] == []


def feed(engine: AlertEngine, start_ns: int, seconds: float, fps: float, units_per_s: float = 10.0,
         frames0: float = 0, units0: float = 0) -> tuple[float, float, list[AlertRecord]]:
    """Statuses every 0.25 s with frames and units growing at the given rates."""
    out: list[AlertRecord] = []
    frames, units = frames0, units0
    for i in range(1, int(seconds * 4) + 1):
        frames, units = frames0 + fps * i / 4, units0 + units_per_s * i / 4
        t = start_ns + i * S // 4
        out += engine.on_camera_status(status(t, frames=int(frames), units=int(units), fps=fps), t)
    return frames, units, out


def test_rate_drift_needs_a_sustained_difference_between_frames_and_units() -> None:
    engine = AlertEngine()
    frames, units, out = feed(engine, T0, 10.0, fps=10.0)
    assert out == []  # one frame per unit, +-1 of counting
    # A short hiccup (2 s of 7 frames/s) is within the sustain time: no alert.
    frames, units, out = feed(engine, T0 + 10 * S, 2.0, fps=7.0, frames0=frames, units0=units)
    frames, units, more = feed(engine, T0 + 12 * S, 8.0, fps=10.0, frames0=frames, units0=units)
    assert [r for r in out + more if r.kind == "camera_rate_drift"] == []
    # The camera now misses every fifth trigger: raised once sustained, not before.
    frames, units, out = feed(engine, T0 + 20 * S, 12.0, fps=8.0, frames0=frames, units0=units)
    (raised,) = [r for r in out if r.kind == "camera_rate_drift"]
    assert raised.state == "active" and raised.severity == "warning"
    assert 5 * S <= raised.first_seen_ns - (T0 + 20 * S) <= 10 * S
    assert "top (CAM-TOP) 8.0 frames/s for 10.0 units/s" in raised.message
    frames, units, out = feed(engine, T0 + 32 * S, 15.0, fps=10.0, frames0=frames, units0=units)
    assert [r.state for r in out if r.kind == "camera_rate_drift"] == ["cleared"]


def test_rate_drift_is_not_judged_on_a_stopped_line_or_a_lost_camera() -> None:
    engine = AlertEngine()
    _, _, out = feed(engine, T0, 15.0, fps=0.0, units_per_s=1.0)  # 5 units per window: too few
    assert [r for r in out if r.kind == "camera_rate_drift"] == []
    for i in range(40):  # a lost camera takes no frames: camera_lost says so, not drift
        t = T0 + 20 * S + i * S // 4
        out += engine.on_camera_status(status(t, connected=False, units=i * 3), t)
    assert [r.kind for r in out] == ["camera_lost"]


def test_a_missed_exposure_raises_a_timestamp_gap_that_clears_later() -> None:
    engine = AlertEngine()
    assert engine.on_camera_status(status(T0, ts_gap_ns=140 * MS), T0) == []  # 1.4 intervals: jitter
    (raised,) = engine.on_camera_status(status(T0 + S, ts_gap_ns=200 * MS), T0 + S)
    assert (raised.kind, raised.state) == ("camera_timestamp_gap", "active")
    assert "2.0 unit intervals apart" in raised.message
    assert [r for r in engine.tick(T0 + 10 * S) if r.kind == "camera_timestamp_gap"] == []  # 9 s: still active
    assert active(engine, "camera_timestamp_gap") is not None
    engine.on_camera_status(status(T0 + 10 * S + 500 * MS), T0 + 10 * S + 500 * MS)
    cleared = [r for r in engine.tick(T0 + 11 * S + 200 * MS) if r.kind == "camera_timestamp_gap"]
    assert [r.state for r in cleared] == ["cleared"]
    assert engine.on_camera_status(status(T0 + 12 * S, ts_gap_ns=0, expected_gap_ns=0), T0 + 12 * S) == []


def test_the_alert_service_consumes_camera_statuses_and_takes_its_limits_from_settings() -> None:
    settings = Settings()
    cfg = alert_config(settings)
    assert cfg.cameras.silent_s == settings.services.alerts_camera_silent_s == 1.0
    published: list[AlertRecord] = []

    class Publisher:
        def publish(self, records: list[AlertRecord], timeout_s: float = 30.0) -> None:
            published.extend(records)

    service = AlertService(settings, AlertEngine(cfg), Publisher())  # type: ignore[arg-type]
    topic = settings.kafka.topic_camera_status
    assert topic == "linesight.camera-status" and topic in service.topics
    service.handle([Msg(topic, status(T0, connected=False).to_json()), Msg(topic, b'{"line": 1}')])  # type: ignore[list-item]
    assert [(r.kind, r.state) for r in published] == [("camera_lost", "active")]


# -- what the gateway measures -------------------------------------------------------------------


@dataclasses.dataclass
class _Station:
    station: str
    serial: str
    clock: CameraClock = dataclasses.field(default_factory=CameraClock)


def frame(ts_ns: int, frame_id: int = 1) -> AcquiredFrame:
    return AcquiredFrame("CAM-TOP", frame_id, ts_ns, ts_ns, True, "success", 8, 8, "Mono8", None)


def test_the_reporter_measures_rates_and_timestamp_gaps_against_the_unit_pitch() -> None:
    encoder = EncoderClock(max_extrapolation_s=1.0)
    sent: list[CameraStatus] = []
    reporter = CameraStatusReporter("line-1", [_Station("top", "CAM-TOP")], encoder, sent.append)
    side = CameraSide(connected=True)
    tracking = TrackerStats(0, {"top": StationStats(missing=1, incomplete=2)}, 0)
    pitch = 250  # counts per unit; 10 units/s
    for i in range(21):  # encoder samples every 0.1 s for 2 s
        encoder.add(T0 + i * 100 * MS, i * pitch)
    for i in range(10):
        reporter.on_trigger(Trigger(i * pitch, T0 + i * 100 * MS))
    assert reporter.pitch_counts() == pitch
    for n, ts in enumerate([T0 + 1 * S, T0 + 1100 * MS, T0 + 1300 * MS]):  # the exposure at 1.2 s is missing
        reporter.on_frame("top", frame(ts, n + 1))
        side.frames += 1
        side.last_frame_ns = ts
    (s,) = reporter.publish_due(T0 + 1300 * MS, {"top": side}, tracking, units=13)
    assert (s.ts_gap_ns, s.expected_gap_ns) == (200 * MS, 100 * MS)  # two unit intervals apart
    assert (s.missing, s.incomplete, s.frames, s.units, s.connected) == (1, 2, 3, 13, True)
    assert reporter.publish_due(T0 + 1400 * MS, {"top": side}, tracking, units=14) == []  # interval not up
    (s,) = reporter.publish_due(T0 + 1550 * MS, {"top": side}, tracking, units=16)
    assert s.ts_gap_ns == 0 and s.units_per_s == pytest.approx(3 / 0.25)  # gaps are per status
    side.connected = False  # reported at once, not at the next interval
    (s,) = reporter.publish_due(T0 + 1560 * MS, {"top": side}, tracking, units=16)
    assert not s.connected and len(sent) == 3
    side.connected = True
    (s,) = reporter.publish_due(T0 + 1570 * MS, {"top": side}, tracking, units=16)
    assert s.connected  # back: at once too
    (s,) = reporter.publish_due(T0 + 1580 * MS, {"top": side}, tracking, units=16, connected={"top": False})
    assert not s.connected  # the camera layer's own flag wins: it notices a loss first
    # A stopped belt between two frames is not a missed exposure: the gap is judged per pitch moved.
    for i in range(21, 40):
        encoder.add(T0 + i * 100 * MS, 20 * pitch if i < 35 else 20 * pitch + (i - 34) * pitch)
    reporter.on_frame("top", frame(T0 + 2500 * MS, 10))  # belt stopped from 2.0 s to 3.4 s
    reporter.on_frame("top", frame(T0 + 3500 * MS, 11))  # one pitch further, a second later
    (s,) = reporter.publish_due(T0 + 3600 * MS, {"top": side}, tracking, units=20)
    assert (s.ts_gap_ns, s.expected_gap_ns) == (1 * S, 1 * S)


# -- the dashboard -------------------------------------------------------------------------------


@pytest.fixture()
def site(chdb_client: ChdbClient, tmp_path: Path) -> Iterator[Site]:
    s, server = make_site(chdb_client, tmp_path, AlertConfig())
    try:
        yield s
    finally:
        server.stop()


def test_the_dashboard_state_has_each_line_camera_panel(site: Site) -> None:
    t = now_ns()
    site.engine.on_camera_status(status(t, frames=1200, incomplete=2, missing=3, reconnects=1,
                                        last_frame_ns=t - 2 * S), t)
    site.engine.on_camera_status(status(t, station="bottom", camera="CAM-BOT", connected=False, frames=900), t)
    op, _ = login(site)
    code, _, body = call(op, site.url + "api/state")
    assert code == 200
    (line,) = json.loads(body)["lines"]
    top, bottom = sorted(line["cameras"], key=lambda c: c["station"], reverse=True)
    assert (top["camera"], top["connected"], top["drops"], top["reconnects"]) == ("CAM-TOP", True, 5, 1)
    assert top["fps"] == 10.0 and 2.0 <= top["last_frame_age_s"] < 5.0
    assert (bottom["camera"], bottom["connected"]) == ("CAM-BOT", False)
    code, _, page = call(op, site.url, headers={"Accept": "text/html"})
    assert code == 200
    assert call(op, site.url + "static/dashboard.js")[0] == 200
