"""The audit record and its hash: what one entry of the GMP audit trail holds (docs/audit.md).

A record is attributable (user, role), time-stamped (UTC, microseconds) and says what happened
(action, subject, old and new value, reason, detail). Its ``record_hash`` is the sha256 of the
canonical JSON of every other field, the predecessor's hash (``prev_hash``) and its place in the
chain (``chain``, ``seq``) included: changing, removing, inserting or moving a record breaks
either its own hash or its successor's link.

Canonical JSON: keys sorted, no spaces, UTF-8, ``seq`` as an integer, ``time`` as
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` and ``detail`` as the already-canonical JSON text it is stored as.
The same bytes are produced from a ClickHouse row, a CSV row or a Parquet row of an export.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
SYSTEM_CHAIN = "system"
SEAL_ACTION = "audit.seal"
SIGN_ACTION = "audit.signature"
DECISION_ACTION = "inspection.decision"
# A signed challenge run's result (docs/validation.md); the alert service reads it off the audit topic.
CHALLENGE_RUN_ACTION = "challenge.run"
# A QA user vouched for a chain's unsigned prefix written before signing began (docs/audit.md).
ADOPT_ACTION = "audit.adopt_legacy"

# Field order of exports and of the ClickHouse table.
FIELDS = (
    "chain", "seq", "time", "user", "role", "action", "subject", "old_value", "new_value", "reason",
    "detail", "prev_hash", "record_hash", "trail_sig",
)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def format_time(t: datetime) -> str:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError("audit times must carry a timezone (UTC)")
    return t.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class AuditEvent:
    """What a caller records; the trail gives it its chain place, predecessor and hash."""

    action: str
    subject: str = ""
    user: str = "system"
    role: str = "system"
    old_value: Any = ""
    new_value: Any = ""
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    time: datetime | None = None  # default: when it is appended


@dataclass(frozen=True)
class AuditRecord:
    chain: str
    seq: int
    time: datetime
    user: str
    role: str
    action: str
    subject: str
    old_value: str
    new_value: str
    reason: str
    detail: str  # canonical JSON text
    prev_hash: str
    record_hash: str = ""
    # Ed25519 signature of record_hash by the trail key (pipeline.audit.seals), on the last record
    # of each append; outside the hash (it signs it). Empty on the other records of the batch.
    trail_sig: str = ""

    @property
    def record_id(self) -> str:
        """``CHAIN#SEQ``: where the record sits (its hash says what it is)."""
        return f"{self.chain}#{self.seq}"

    def canonical(self) -> str:
        doc = {
            "chain": self.chain, "seq": int(self.seq), "time": format_time(self.time), "user": self.user,
            "role": self.role, "action": self.action, "subject": self.subject, "old_value": self.old_value,
            "new_value": self.new_value, "reason": self.reason, "detail": self.detail, "prev_hash": self.prev_hash,
        }
        return canonical_json(doc)

    def compute_hash(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def sealed(self) -> AuditRecord:
        """This record with its hash filled in."""
        return replace(self, record_hash=self.compute_hash())

    def detail_dict(self) -> dict[str, Any]:
        try:
            value = json.loads(self.detail) if self.detail else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def to_row(self) -> dict[str, Any]:
        """ClickHouse row (time as a datetime: see `pipeline.clickhouse`)."""
        return {f: getattr(self, f) for f in FIELDS}

    def to_text_row(self) -> dict[str, str]:
        """Export row: every field as text, time canonical."""
        row = {f: _text(getattr(self, f)) for f in FIELDS}
        row["time"] = format_time(self.time)
        return row

    def to_json(self) -> bytes:
        return canonical_json(self.to_text_row() | {"seq": int(self.seq)}).encode()

    @classmethod
    def from_mapping(cls, row: dict[str, Any]) -> AuditRecord:
        """From a ClickHouse row (datetime) or an export row (text)."""
        t = row["time"]
        when = parse_time(t) if isinstance(t, str) else t.astimezone(UTC)
        return cls(
            chain=_text(row["chain"]), seq=int(row["seq"]), time=when, user=_text(row["user"]),
            role=_text(row["role"]), action=_text(row["action"]), subject=_text(row["subject"]),
            old_value=_text(row["old_value"]), new_value=_text(row["new_value"]), reason=_text(row["reason"]),
            detail=_text(row["detail"]), prev_hash=_text(row["prev_hash"]), record_hash=_text(row["record_hash"]),
            trail_sig=_text(row.get("trail_sig")),
        )


def make_record(chain: str, seq: int, prev_hash: str, event: AuditEvent, now: datetime) -> AuditRecord:
    """The hashed record of ``event`` at place ``seq`` of ``chain`` after ``prev_hash``."""
    when = event.time or now
    return AuditRecord(
        chain=chain, seq=seq, time=when.astimezone(UTC), user=_text(event.user), role=_text(event.role),
        action=event.action, subject=_text(event.subject), old_value=_text(event.old_value),
        new_value=_text(event.new_value), reason=_text(event.reason), detail=canonical_json(event.detail or {}),
        prev_hash=prev_hash,
    ).sealed()


def parse_record_id(text: str) -> tuple[str, int]:
    chain, sep, seq = text.rpartition("#")
    if not sep or not chain or not seq.isdigit():
        raise ValueError(f"not a record id (CHAIN#SEQ, as `linesight audit verify` prints): {text!r}")
    return chain, int(seq)


def os_user() -> str:
    """The operating-system account running this process: who started a service or a command
    when no LineSight user logged in (containers without a passwd entry give their uid)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - getpass raises OSError or KeyError depending on platform
        return f"uid:{os.getuid()}"
