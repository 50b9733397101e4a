"""The alert wire format (`linesight.alerts`) and the book that raises, refreshes, clears and
acknowledges alerts.

An alert is one episode of one condition on one line: ``alert_id = line:kind:first_seen_ns``.
Every change (raise, clear, acknowledge, escalation) publishes the whole alert again with a
higher ``revision``; the ClickHouse table is a ReplacingMergeTree on ``revision``, so the latest
state wins. A refresh of an active alert (condition still true) only moves ``last_seen`` in
memory; it is published at most every ``refresh_every_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pipeline.wire.messages import JsonMessage

Severity = Literal["info", "warning", "critical"]
State = Literal["active", "cleared"]
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}

KINDS = (
    "reject_rate",       # p-chart: reject fraction of an interval above the upper control limit
    "reject_run",        # N consecutive rejects
    "score_drift",       # score distribution away from the reference (PSI)
    "image_dark",
    "image_overexposed",
    "image_blurred",
    "frames_frozen",     # identical consecutive frames from one camera
    "frames_missing",    # a line that stopped sending frames
    "pipeline_health",   # a worker / Triton / broker heartbeat stale or unhealthy
    "duplicate_serial",  # a label serial number seen twice in one lot (GS1 serialisation)
    "camera_lost",       # a station camera disconnected, or its gateway status silent
    "camera_rate_drift",  # a camera's frames per unit away from one, sustained
    "camera_timestamp_gap",  # consecutive camera timestamps more than 1.5 unit intervals apart
    "challenge_overdue",  # production went on past the grace period after a changeover or deploy, no passed challenge
    "review_rate",       # the lot's share of review units above its recipe's [review] limit
)


@dataclass(frozen=True)
class AlertRecord(JsonMessage):
    alert_id: str
    kind: str
    severity: Severity
    line: str
    state: State
    first_seen_ns: int
    last_seen_ns: int
    message: str
    value: float = 0.0
    cleared_ns: int | None = None
    acknowledged_by: str = ""
    acknowledged_ns: int | None = None
    revision: int = 0
    source: str = "linesight-alerts"

    @property
    def open(self) -> bool:
        """Needs an operator: active, or cleared but nobody acknowledged it yet."""
        return not self.acknowledged_by


class AlertBook:
    """Current alerts by (line, kind); returns the records to publish on every change."""

    def __init__(self, refresh_every_s: float = 30.0, keep_closed: int = 200) -> None:
        self.active: dict[tuple[str, str], AlertRecord] = {}
        self.by_id: dict[str, AlertRecord] = {}
        self._published_at: dict[str, int] = {}
        self.refresh_every_ns = int(refresh_every_s * 1e9)
        self.keep_closed = keep_closed

    def _store(self, rec: AlertRecord) -> AlertRecord:
        self.by_id[rec.alert_id] = rec
        self._published_at[rec.alert_id] = rec.last_seen_ns
        if len(self.by_id) > self.keep_closed + len(self.active):
            # forget the oldest closed (cleared and acknowledged) alerts
            closed = sorted(
                (r for r in self.by_id.values() if r.state == "cleared" and r.acknowledged_by),
                key=lambda r: r.last_seen_ns,
            )
            for r in closed[: len(self.by_id) - self.keep_closed - len(self.active)]:
                self.by_id.pop(r.alert_id, None)
                self._published_at.pop(r.alert_id, None)
        return rec

    def set(
        self, line: str, kind: str, active: bool, now_ns: int, severity: Severity = "warning",
        message: str = "", value: float = 0.0,
    ) -> list[AlertRecord]:
        """The condition `kind` on `line` is (not) present now; the records to publish."""
        key = (line, kind)
        cur = self.active.get(key)
        if active:
            if cur is None:
                rec = AlertRecord(f"{line}:{kind}:{now_ns}", kind, severity, line, "active", now_ns, now_ns,
                                  message, float(value))
                self.active[key] = rec
                return [self._store(rec)]
            escalated = SEVERITY_RANK[severity] > SEVERITY_RANK[cur.severity]
            rec = replace(cur, last_seen_ns=now_ns, message=message or cur.message, value=float(value),
                          severity=severity if escalated else cur.severity)
            self.active[key] = rec
            if escalated or now_ns - self._published_at.get(rec.alert_id, 0) >= self.refresh_every_ns:
                rec = replace(rec, revision=cur.revision + 1)
                self.active[key] = rec
                return [self._store(rec)]
            self.by_id[rec.alert_id] = rec
            return []
        if cur is None:
            return []
        del self.active[key]
        rec = replace(cur, state="cleared", cleared_ns=now_ns, last_seen_ns=max(cur.last_seen_ns, now_ns),
                      revision=cur.revision + 1)
        return [self._store(rec)]

    def acknowledge(self, alert_id: str, user: str, now_ns: int) -> AlertRecord:
        """Record who acknowledged; KeyError for an unknown id, ValueError when already acknowledged."""
        cur = self.by_id[alert_id]
        if cur.acknowledged_by:
            raise ValueError(f"alert {alert_id} was already acknowledged by {cur.acknowledged_by}")
        rec = replace(cur, acknowledged_by=user, acknowledged_ns=now_ns, revision=cur.revision + 1)
        if cur.state == "active":
            self.active[(cur.line, cur.kind)] = rec
        return self._store(rec)

    def all(self) -> list[AlertRecord]:
        return sorted(self.by_id.values(), key=lambda r: (-SEVERITY_RANK[r.severity], -r.first_seen_ns))
