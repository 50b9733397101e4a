"""The alert engine: every detector per line, fed with results, frames and heartbeats, plus the
live figures the dashboard shows (throughput, reject rate by class, p-chart, model versions,
last rejects with their frames). Pure apart from its lock: the caller passes every time
(``now_ns``), so tests drive it with a fake clock.

Image quality is computed here, from the frame bytes on the frames topic (PNG/JPEG decoded with
Pillow, grayscale), not in the inspection worker: the worker's latency budget stays untouched,
and the frames are needed here anyway for the reject thumbnails.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipeline.alerts.cameras import CameraLimits, CameraMonitor
from pipeline.alerts.detectors import (
    DriftDetector,
    FrozenDetector,
    PChart,
    QualityDetector,
    QualityLimits,
    RunDetector,
    frame_quality,
    quality_problems,
)
from pipeline.alerts.record import AlertBook, AlertRecord
from pipeline.core.times import NS_PER_S
from pipeline.inspections.label import SerialTracker
from pipeline.recipes.schema import ReviewSpec
from pipeline.wire.codec import open_frame
from pipeline.wire.messages import CameraStatus, FrameMeta, Heartbeat, InspectionResult, worst_verdict


@dataclass(frozen=True)
class AlertConfig:
    interval_s: float = 10.0           # p-chart interval
    pchart_min_baseline: int = 5       # in-control intervals before limits are drawn and judged
    run_length: int = 8                # consecutive rejects
    missing_after_s: float = 5.0       # a line with no frame for this long: frames_missing
    heartbeat_stale_s: float = 6.0     # worker heartbeat older than this: pipeline_health
    drift_baseline_n: int = 300
    drift_window: int = 200
    quality_every: int = 1             # analyse every k-th frame of a camera
    # ... and at most this many per second per camera: exposure and focus drift over seconds, and
    # a flood of (malformed) frames must not make the alert service decode each one.
    quality_max_per_s: float = 10.0
    quality_max_px: int = 512          # frames are reduced to this longest side before the analysis
    frames_kept_bytes: int = 64 << 20  # recent frames kept for reject views, by total size
    refresh_every_s: float = 30.0
    last_rejects: int = 12
    throughput_window_s: float = 10.0
    limits: QualityLimits = QualityLimits()
    cameras: CameraLimits = CameraLimits()  # camera_lost, camera_rate_drift, camera_timestamp_gap
    # challenge_overdue: production this long after a changeover or deploy without a passed challenge.
    challenge_grace_s: float = 900.0
    # review_rate: judged once the lot has this many units (a first unit in review is not a rate).
    review_min_units: int = 50


@dataclass
class RejectView:
    unit_id: str
    line: str
    product: str
    defect: str
    score: float | None
    verdict: str
    capture_ns: int
    image: bytes = b""
    content_type: str = "image/png"
    reasons: list[str] = field(default_factory=list)  # measurement inspections: the failed checks


@dataclass
class LineState:
    line: str
    config: AlertConfig
    total: int = 0
    rejected: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    arrivals: deque[int] = field(default_factory=deque)           # result times (throughput)
    recent_rejects: deque[int] = field(default_factory=deque)     # reject times (rate)
    last_frame_ns: int = 0
    last_result_ns: int = 0
    models: dict[str, str] = field(default_factory=dict)          # product -> model name:version
    interval_start_ns: int = 0
    interval_n: int = 0
    interval_rejects: int = 0
    frames_seen: int = 0

    first_result_ns: int = 0
    # Serial numbers of the current lot -> the first unit that carried each (duplicate_serial).
    recipe: str = ""  # the recipe of the line's latest result
    last_measurements: dict[str, float | int | str | bool] = field(default_factory=dict)
    serial_lot: str = ""  # the lot whose serials are being checked (duplicate_serial)
    # What judges the line's units (recipe, model versions): a change is a changeover or deploy,
    # after which a challenge is due (since `challenge_due_ns`, 0: none due).
    judged_by: str = ""
    challenge_due_ns: int = 0
    challenge_due_why: str = ""
    # review_rate: the current lot's units and their worst verdict so far (a unit has a result per station).
    review_lot: str = ""
    lot_units: dict[str, str] = field(default_factory=dict)
    lot_review: int = 0

    def __post_init__(self) -> None:
        self.pchart = PChart(min_baseline=self.config.pchart_min_baseline)
        self.run = RunDetector(self.config.run_length)
        self.drift: dict[str, DriftDetector] = {}
        self.quality = QualityDetector()
        self.frozen = FrozenDetector()
        self.cameras = CameraMonitor(self.config.cameras)  # the gateway's station cameras


class ScoreReferences(Protocol):
    """Where a model version's drift reference comes from (a dict, or `CardReferences`)."""

    # Only `get(key)` is used; a default parameter here would exclude plain dicts, whose `get`
    # is overloaded on the default's type.
    def get(self, key: str, /) -> list[float] | None: ...


class AlertEngine:
    def __init__(self, config: AlertConfig | None = None, reference_scores: ScoreReferences | None = None,
                 lines: list[str] | None = None, review_limit: Callable[[str], float] | None = None) -> None:
        self.config = config or AlertConfig()
        # A recipe ref's largest share of review units per lot (its [review] table; docs/review.md).
        self.review_limit = review_limit or (lambda ref: ReviewSpec().max_review_fraction)
        self.book = AlertBook(self.config.refresh_every_s)
        self.lines: dict[str, LineState] = {}
        self.reference_scores: ScoreReferences = reference_scores or {}
        self.workers: dict[str, Heartbeat] = {}
        self.worker_seen_ns: dict[str, int] = {}
        self.worker_first_ns: dict[str, int] = {}  # first heartbeat: tells a replacement (`_retire`)
        self._replacements: set[str] = set()  # workers that already took a retired one's place
        self.rejects: deque[RejectView] = deque(maxlen=self.config.last_rejects)
        self._frames: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._frames_bytes = 0
        self._quality_at: dict[tuple[str, str], int] = {}  # (line, camera) -> last analysis (ns)
        self.quality_analysed = 0
        self.lock = threading.RLock()
        self.serials = SerialTracker()  # GS1 serial numbers per line and lot (duplicate_serial)
        self.version = 0  # bumped on every change; the dashboard's SSE stream watches it
        self.started_ns = 0  # first tick: a configured line that never sends a frame is missing too
        for line in lines or []:
            self._line(line)

    def _line(self, line: str) -> LineState:
        st = self.lines.get(line)
        if st is None:
            st = self.lines[line] = LineState(line, self.config)
        return st

    # ------------------------------------------------------------ inputs
    def on_frame(self, meta: FrameMeta, image: bytes, now_ns: int) -> list[AlertRecord]:
        if meta.purpose:  # a challenge set's image, not this camera's view of production
            return []
        with self.lock:
            st = self._line(meta.line)
            st.last_frame_ns = now_ns
            st.frames_seen += 1
            self._keep_frame(meta.unit_id, image, meta.content_type)
            out = self.book.set(meta.line, "frames_missing", False, now_ns)
            if self._quality_due(st, meta, now_ns):
                gray = self._gray(image)
                if gray is not None and gray.size:
                    q = frame_quality(gray)
                    states = st.quality.observe(quality_problems(q, self.config.limits))
                    for kind, active in states.items():
                        out += self.book.set(meta.line, kind, active, now_ns, "warning",
                                             _quality_message(kind, meta.camera, q), q.mean)
                    frozen = st.frozen.observe(meta.camera, q.digest)
                    out += self.book.set(meta.line, "frames_frozen", frozen, now_ns, "critical",
                                         f"camera {meta.camera} sends identical frames", 0.0)
            self.version += 1
            return out

    def _keep_frame(self, unit_id: str, image: bytes, content_type: str) -> None:
        old = self._frames.pop(unit_id, None)
        self._frames_bytes -= len(old[0]) if old else 0
        self._frames[unit_id] = (image, content_type)
        self._frames_bytes += len(image)
        while self._frames and (len(self._frames) > 256 or self._frames_bytes > self.config.frames_kept_bytes):
            _, (dropped, _) = self._frames.popitem(last=False)
            self._frames_bytes -= len(dropped)

    def _quality_due(self, st: LineState, meta: FrameMeta, now_ns: int) -> bool:
        cfg = self.config
        if st.frames_seen % max(1, cfg.quality_every):
            return False
        key = (meta.line, meta.camera)
        last = self._quality_at.get(key)
        if last is not None and cfg.quality_max_per_s > 0 and now_ns - last < NS_PER_S / cfg.quality_max_per_s:
            return False
        self._quality_at[key] = now_ns
        self.quality_analysed += 1
        return True

    def _gray(self, image: bytes) -> np.ndarray | None:
        """The frame in grey, at most ``quality_max_px`` a side; None when it is not a usable frame
        (refused from its header before decoding, or undecodable: the worker dead-letters it)."""
        try:
            with open_frame(image) as img:
                side = self.config.quality_max_px
                img.draft("L", (side, side))  # JPEG decodes at reduced size directly
                gray = img.convert("L")
            gray.thumbnail((side, side))
            return np.asarray(gray)
        except Exception:  # noqa: BLE001
            return None

    def on_result(self, r: InspectionResult, now_ns: int) -> list[AlertRecord]:
        with self.lock:
            cfg = self.config
            st = self._line(r.line)
            self._judged_by(st, r, now_ns)
            if r.purpose:  # challenge units never count as production (rates, runs, drift, serials)
                return []
            out = self._roll_interval(st, now_ns)
            out += self._challenge_overdue(st, now_ns)
            rejected = r.verdict != "pass"
            st.total += 1
            st.last_result_ns = now_ns
            st.first_result_ns = st.first_result_ns or now_ns
            st.arrivals.append(now_ns)
            st.models[r.product] = f"{r.model_name}:{r.model_version}" if r.model_version else r.model_name
            st.recipe = r.recipe or st.recipe
            if r.measurements:
                st.last_measurements = dict(r.measurements)
            st.interval_n += 1
            if rejected:
                st.rejected += 1
                st.interval_rejects += 1
                st.by_class[r.defect] += 1
                st.recent_rejects.append(now_ns)
                image, ctype = self._frames.get(r.unit_id, (b"", "image/png"))
                self.rejects.appendleft(RejectView(r.unit_id, r.line, r.product, r.defect, r.score, r.verdict,
                                                   r.capture_ns, image, ctype, list(r.reasons)))
            out += self._serial(st, r, now_ns)
            out += self._review_rate(st, r, now_ns)
            run = st.run.observe(rejected)
            out += self.book.set(r.line, "reject_run", run, now_ns, "critical",
                                 f"{st.run.run} consecutive rejects (limit {cfg.run_length})", st.run.run)
            if r.inspected and r.score is not None:
                key = f"{r.model_name}:{r.model_version}"
                det = st.drift.get(key)
                if det is None:
                    det = st.drift[key] = DriftDetector(self.reference_scores.get(key), cfg.drift_baseline_n,
                                                        cfg.drift_window)
                state = det.observe(float(r.score))
                if state is not None:
                    out += self.book.set(r.line, "score_drift", state, now_ns, "warning",
                                         f"score PSI {det.last_psi:.2f} (KS {det.last_ks:.2f}) vs "
                                         f"{'validation' if det.fixed else 'baseline'} scores of {key}",
                                         det.last_psi)
            self.version += 1
            return out

    def _judged_by(self, st: LineState, r: InspectionResult, now_ns: int) -> None:
        """A new recipe or model version judging the line (changeover, deploy): a challenge is due."""
        if not (r.inspected and r.model_version):
            return  # fail-safe results name no judge
        judged_by = f"{r.recipe or r.product} {r.model_name}:{r.model_version}"
        if st.judged_by and judged_by != st.judged_by and not st.challenge_due_ns:
            st.challenge_due_ns = now_ns
            st.challenge_due_why = f"{st.judged_by} -> {judged_by}"
        st.judged_by = judged_by

    def _challenge_overdue(self, st: LineState, now_ns: int) -> list[AlertRecord]:
        if not st.challenge_due_ns or now_ns - st.challenge_due_ns <= self.config.challenge_grace_s * NS_PER_S:
            return []
        late = (now_ns - st.challenge_due_ns) / NS_PER_S
        return self.book.set(st.line, "challenge_overdue", True, now_ns, "warning",
                             f"production for {late:.0f} s since {st.challenge_due_why} without a passed challenge "
                             f"run (grace {self.config.challenge_grace_s:.0f} s)", late)

    def on_judge_change(self, now_ns: int, why: str, line: str = "", model: str = "") -> list[AlertRecord]:
        """A recipe activation on `line`, or a deploy / rollback of `model` (every line it judges),
        read off the audit topic: a challenge is due from now, whether or not units came yet."""
        with self.lock:
            if line:
                targets = [self._line(line)]
            else:
                targets = [st for st in self.lines.values() if model and any(model in m for m in st.models.values())]
            for st in targets:
                if not st.challenge_due_ns:
                    st.challenge_due_ns, st.challenge_due_why = now_ns, why
            self.version += 1
            return []

    def on_challenge(self, line: str, passed: bool, now_ns: int) -> list[AlertRecord]:
        """A challenge run's signed result (the audit topic): a passed one clears what is due."""
        with self.lock:
            st = self._line(line)
            if not passed:
                return []
            st.challenge_due_ns, st.challenge_due_why = 0, ""
            self.version += 1
            return self.book.set(line, "challenge_overdue", False, now_ns)

    def _review_rate(self, st: LineState, r: InspectionResult, now_ns: int) -> list[AlertRecord]:
        """The lot's share of units in review against its recipe's limit; a new lot starts afresh."""
        out: list[AlertRecord] = []
        if r.lot != st.review_lot:
            out += self.book.set(st.line, "review_rate", False, now_ns)
            st.review_lot, st.lot_units, st.lot_review = r.lot, {}, 0
        known, before = r.unit_id in st.lot_units, st.lot_units.get(r.unit_id, "pass")
        worst = worst_verdict(before, r.verdict)
        st.lot_units[r.unit_id] = worst
        st.lot_review += int(worst == "review") - int(known and before == "review")
        n, k, limit = len(st.lot_units), st.lot_review, self.review_limit(r.recipe)
        over = n >= self.config.review_min_units and k > limit * n
        return out + self.book.set(st.line, "review_rate", over, now_ns, "warning",
                                   f"lot {r.lot}: {k} of {n} units ({100 * k / n:.1f} %) in review, above the "
                                   f"recipe's {100 * limit:.1f} %", k / n)

    def _serial(self, st: LineState, r: InspectionResult, now_ns: int) -> list[AlertRecord]:
        """GS1 serialisation: a serial printed twice in a lot is a counterfeit or a printer fault.
        Raised on the second unit, latched (a person must look) until the line starts a new lot."""
        serial = r.measurements.get("serial")
        if not isinstance(serial, str) or not serial:
            return []
        out: list[AlertRecord] = []
        if r.lot != st.serial_lot:
            st.serial_lot = r.lot
            out += self.book.set(r.line, "duplicate_serial", False, now_ns)
        first = self.serials.first_unit(r.line, r.lot, serial, r.unit_id)
        if first is not None:
            out += self.book.set(r.line, "duplicate_serial", True, now_ns, "critical",
                                 f"serial {serial} of lot {r.lot} seen twice: units {first} and {r.unit_id}")
        return out

    def on_heartbeat(self, hb: Heartbeat, now_ns: int) -> list[AlertRecord]:
        with self.lock:
            if hb.kind != "worker":
                return []
            self.workers[hb.source] = hb
            self.worker_seen_ns[hb.source] = now_ns
            self.worker_first_ns.setdefault(hb.source, now_ns)
            return self._health(now_ns)

    def on_camera_status(self, status: CameraStatus, now_ns: int) -> list[AlertRecord]:
        """A station camera's status from the gateway: lost at once, rate drift, missed exposures."""
        with self.lock:
            st = self._line(status.line)
            st.cameras.observe(status, now_ns)
            out = self._camera_alerts(st, now_ns)
            self.version += 1
            return out

    def _camera_alerts(self, st: LineState, now_ns: int) -> list[AlertRecord]:
        mon = st.cameras
        lost, drifting, gapped = mon.lost(now_ns), mon.drifting(), mon.gapped(now_ns)
        return (self.book.set(st.line, "camera_lost", bool(lost), now_ns, "critical", "; ".join(lost), len(lost))
                + self.book.set(st.line, "camera_rate_drift", bool(drifting), now_ns, "warning",
                                "; ".join(drifting), len(drifting))
                + self.book.set(st.line, "camera_timestamp_gap", bool(gapped), now_ns, "warning",
                                "; ".join(gapped), len(gapped)))

    # ------------------------------------------------------------ time
    def tick(self, now_ns: int) -> list[AlertRecord]:
        """Time-driven checks: missing frames, stale heartbeats, the p-chart interval."""
        with self.lock:
            out: list[AlertRecord] = []
            limit = int(self.config.missing_after_s * 1e9)
            self.started_ns = self.started_ns or now_ns
            for st in self.lines.values():
                out += self._roll_interval(st, now_ns)
                silent = now_ns - (st.last_frame_ns or self.started_ns)
                what = "no frame" if st.last_frame_ns else "no frame yet"
                out += self.book.set(st.line, "frames_missing", silent > limit, now_ns, "critical",
                                     f"{what} from {st.line} for {silent / 1e9:.0f} s", silent / 1e9)
                out += self._camera_alerts(st, now_ns)
            out += self._health(now_ns)
            if out:
                self.version += 1
            return out

    def _roll_interval(self, st: LineState, now_ns: int) -> list[AlertRecord]:
        width = int(self.config.interval_s * 1e9)
        if st.interval_start_ns == 0:
            st.interval_start_ns = now_ns - now_ns % width
            return []
        out: list[AlertRecord] = []
        while now_ns >= st.interval_start_ns + width:
            if st.interval_n > 0:
                pt = st.pchart.add(st.interval_start_ns, st.interval_n, st.interval_rejects)
                if pt.ucl is not None:
                    out += self.book.set(
                        st.line, "reject_rate", pt.out_of_control, now_ns, "critical",
                        f"reject fraction {pt.p:.1%} of {pt.n} units vs UCL {pt.ucl:.1%} (p̄ {pt.center:.1%})",
                        pt.p,
                    )
            st.interval_start_ns += width
            st.interval_n = st.interval_rejects = 0
            if now_ns - st.interval_start_ns > 100 * width:  # long silence: jump, don't loop
                st.interval_start_ns = now_ns - now_ns % width
        return out

    def _retire(self, now_ns: int, stale: int) -> None:
        """Forget each silent worker that a worker first heard after its silence replaced (a
        restarted worker has a new id: host and pid). Paired one to one, so a worker that died
        without a replacement stays a problem: the alert clears when every component is back."""
        silent = sorted((self.worker_seen_ns[s], s) for s in self.workers if now_ns - self.worker_seen_ns[s] > stale)
        fresh = sorted((self.worker_first_ns[s], s) for s in self.workers
                       if now_ns - self.worker_seen_ns[s] <= stale and s not in self._replacements)
        for last_ns, source in silent:
            newcomer = next((f for f in fresh if f[0] > last_ns), None)
            if newcomer is None:
                continue
            fresh.remove(newcomer)
            self._replacements.add(newcomer[1])
            self._replacements.discard(source)
            for table in (self.workers, self.worker_seen_ns, self.worker_first_ns):
                table.pop(source, None)

    def _health(self, now_ns: int) -> list[AlertRecord]:
        stale = int(self.config.heartbeat_stale_s * 1e9)
        self._retire(now_ns, stale)
        problems = []
        for source, hb in sorted(self.workers.items()):
            age = now_ns - self.worker_seen_ns[source]
            if age > stale:
                problems.append(f"worker {source} silent for {age / 1e9:.0f} s")
            elif hb.triton_ready is False:
                problems.append(f"worker {source}: Triton not ready {hb.detail}".strip())
        return self.book.set("*", "pipeline_health", bool(problems), now_ns, "critical", "; ".join(problems),
                             len(problems))

    def acknowledge(self, alert_id: str, user: str, now_ns: int) -> AlertRecord:
        with self.lock:
            rec = self.book.acknowledge(alert_id, user, now_ns)
            self.version += 1
            return rec

    # ------------------------------------------------------------ views
    def snapshot(self, now_ns: int) -> dict:
        """Everything the dashboard shows, JSON-ready."""
        with self.lock:
            window = int(self.config.throughput_window_s * 1e9)
            lines = []
            for st in sorted(self.lines.values(), key=lambda s: s.line):
                while st.arrivals and st.arrivals[0] < now_ns - window:
                    st.arrivals.popleft()
                while st.recent_rejects and st.recent_rejects[0] < now_ns - window:
                    st.recent_rejects.popleft()
                n = len(st.arrivals)
                span_s = min(self.config.throughput_window_s, max(1.0, (now_ns - st.first_result_ns) / 1e9))
                silent_s = (now_ns - st.last_frame_ns) / 1e9 if st.last_frame_ns else None
                lines.append({
                    "line": st.line,
                    "running": silent_s is not None and silent_s <= self.config.missing_after_s,
                    "silent_s": silent_s,
                    "throughput_per_s": n / span_s if st.first_result_ns else 0.0,
                    "reject_rate_recent": len(st.recent_rejects) / n if n else 0.0,
                    "total": st.total,
                    "rejected": st.rejected,
                    "reject_rate": st.rejected / st.total if st.total else 0.0,
                    "by_class": {k: v / st.total for k, v in sorted(st.by_class.items())} if st.total else {},
                    "by_class_count": dict(sorted(st.by_class.items())),
                    "models": dict(sorted(st.models.items())),
                    "recipe": st.recipe,
                    "last_measurements": st.last_measurements,
                    "cameras": st.cameras.view(now_ns),
                    "pchart_interval_s": self.config.interval_s,
                    "pchart_min_baseline": self.config.pchart_min_baseline,
                    "pchart": [
                        {"t": p.start_ns, "n": p.n, "p": p.p, "center": p.center, "lcl": p.lcl, "ucl": p.ucl,
                         "out": p.out_of_control} for p in st.pchart.points
                    ],
                })
            return {
                "version": self.version,
                "lines": lines,
                "workers": {s: {"triton_ready": hb.triton_ready,
                                "age_s": (now_ns - self.worker_seen_ns[s]) / 1e9} for s, hb in self.workers.items()},
                "alerts": [a.__dict__ | {"open": a.open} for a in self.book.all()],
                "rejects": [{"unit_id": r.unit_id, "line": r.line, "product": r.product, "defect": r.defect,
                             "score": r.score, "verdict": r.verdict, "capture_ns": r.capture_ns,
                             "has_image": bool(r.image), "measured": r.score is None and bool(r.reasons),
                             "reasons": r.reasons[:4]} for r in self.rejects],
            }

    def reject_image(self, unit_id: str) -> tuple[bytes, str] | None:
        with self.lock:
            for r in self.rejects:
                if r.unit_id == unit_id and r.image:
                    return r.image, r.content_type
            return None


def _quality_message(kind: str, camera: str, q) -> str:  # noqa: ANN001
    what = {"image_dark": f"dark frames (mean gray {q.mean:.0f})",
            "image_overexposed": f"over-exposed frames (mean {q.mean:.0f}, {q.clipped:.0%} clipped)",
            "image_blurred": f"blurred frames (sharpness {q.sharpness:.1f})"}[kind]
    return f"camera {camera}: {what}"
