"""The audit service's intake without a broker: the submitted event's contract, and the appender's
handling of a consumed batch (pipeline/audit/intake.py, appender.py): appended once under
redelivery, hostile events dead-lettered with their reason, the chain still verifying."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support import Msg

from pipeline.audit.appender import AuditAppender
from pipeline.audit.intake import AuditEventMessage, event_id_for, to_message
from pipeline.audit.record import DECISION_ACTION, SYSTEM_CHAIN, AuditEvent, make_record
from pipeline.audit.trail import AuditTrail
from pipeline.clickhouse import ChdbClient
from pipeline.settings import KafkaSettings
from pipeline.wire.messages import H_DLQ_REASON, MessageError

TOPIC = "linesight.audit-events"
CHAIN = "decisions/line-1/p0"


class DeadLetters:
    """What the appender produces its refusals with (a producer's produce/poll/flush)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers: Any = None) -> None:
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": dict(headers or [])})

    def poll(self, timeout_s: float = 0.0) -> None:
        return None

    def flush(self, timeout_s: float = 0.0) -> int:
        return 0


@pytest.fixture()
def trail(chdb_client: ChdbClient, tmp_path: Path) -> AuditTrail:
    db = f"intake_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    return AuditTrail(chdb_client, db, state_dir=tmp_path / "state", key_file=tmp_path / "keys" / "seal.key",
                      anchor_dir=tmp_path / "anchors")


def message(chain: str, event: AuditEvent, offset: int, key: bytes | None = None, event_id: str | None = None) -> Msg:
    msg = to_message(chain, event, event_id or event_id_for(chain, event), "test-host")
    return Msg(TOPIC, msg.to_json(), offset=offset, key=chain.encode() if key is None else key)


def appender(trail: AuditTrail) -> tuple[AuditAppender, DeadLetters]:
    dead = DeadLetters()
    return AuditAppender(trail, dead, KafkaSettings()), dead  # type: ignore[arg-type]


def test_a_submitted_event_becomes_the_record_its_submitter_would_have_appended() -> None:
    when = datetime(2026, 12, 5, 14, 3, 7, 123457, tzinfo=UTC)  # microseconds survive exactly
    ev = AuditEvent("threshold.change", subject="line-1", user="quinn", role="qa", old_value=0.4, new_value=0.35,
                    reason="CC-12", detail={"product": "tab-a", "n": 3}, time=when)
    msg = AuditEventMessage.from_json(to_message(SYSTEM_CHAIN, ev, "e1", "host").to_json())
    assert msg.problem() is None
    now = datetime.now(UTC)
    assert make_record(SYSTEM_CHAIN, 0, "0" * 64, msg.event(), now) == make_record(SYSTEM_CHAIN, 0, "0" * 64, ev, now)
    # A decision's id is its place in the rules (one per unit and chain): a redelivery submits the same id.
    d = AuditEvent(DECISION_ACTION, subject="u-1")
    assert event_id_for(CHAIN, d) == event_id_for(CHAIN, d) != event_id_for("decisions/line-2/p0", d)
    assert event_id_for(SYSTEM_CHAIN, ev) != event_id_for(SYSTEM_CHAIN, ev)


def test_redelivered_and_repeated_events_are_appended_once(trail: AuditTrail) -> None:
    app, dead = appender(trail)
    decisions = [message(CHAIN, AuditEvent(DECISION_ACTION, subject=f"u-{i}", new_value="pass"), i) for i in range(5)]
    login = message(SYSTEM_CHAIN, AuditEvent("session.login", subject="ada", user="ada", role="admin"), 0,
                    event_id="login-1")
    app.handle([*decisions, login])
    # The same batch again (a crash before the commit), and the same decisions re-submitted at new offsets
    # (a sink's redelivered batch) with one new unit.
    app.handle([*decisions, login])
    again = [message(CHAIN, AuditEvent(DECISION_ACTION, subject=f"u-{i}", new_value="pass"), 10 + i) for i in range(6)]
    app.handle(again + again[-1:])
    spans = trail.store.read()
    assert [r.subject for r in spans[CHAIN][0]] == [f"u-{i}" for i in range(6)]
    assert [r.action for r in spans[SYSTEM_CHAIN][0]] == ["session.login"]
    assert (app.appended, app.duplicates, app.refused, dead.sent) == (7, 12, 0, [])
    assert trail.verify().ok


@pytest.mark.parametrize(("value", "key", "why"), [
    (b"\xff\xfenot json", CHAIN.encode(), "is not JSON"),
    (b"[1, 2]", CHAIN.encode(), "must be a JSON object"),
    (json.dumps({"schema_version": 9}).encode(), CHAIN.encode(), "schema_version 9"),
    (None, CHAIN.encode(), "empty"),
    ("keyed", b"decisions/line-9/p0", "events must be keyed by their chain"),
    ("no-key", None, "events must be keyed by their chain"),
    ("empty-action", CHAIN.encode(), "empty action"),
    ("long-id", CHAIN.encode(), "event_id of 5000 characters"),
    ("bad-type", CHAIN.encode(), "bad AuditEventMessage.detail"),
    ("seal", CHAIN.encode(), "audit.seal records are the audit service's own"),
    ("surrogate", CHAIN.encode(), "not UTF-8 text"),
])
def test_a_hostile_event_is_dead_lettered_with_its_reason_and_the_batch_goes_on(
    trail: AuditTrail, value: bytes | str | None, key: bytes | None, why: str
) -> None:
    good = to_message(CHAIN, AuditEvent(DECISION_ACTION, subject="u-ok"), "ok-1", "host")
    doc = json.loads(good.to_json())
    if value == "empty-action":
        doc["action"] = " "
    elif value == "long-id":
        doc["event_id"] = "x" * 5000
    elif value == "bad-type":
        doc["detail"] = "not an object"
    elif value == "seal":  # a forged seal would vouch for whatever head the chain has
        doc["action"] = "audit.seal"
    elif value == "surrogate":  # valid JSON, but no UTF-8 for the record's hash
        doc["reason"] = "\ud800"
    raw = json.dumps(doc).encode() if isinstance(value, str) else value
    bad = Msg(TOPIC, raw or b"", offset=7, key=key if key is not None else b"")
    if key is None:
        bad._k = None  # type: ignore[assignment] - a record without a key
    app, dead = appender(trail)
    app.handle([bad, Msg(TOPIC, good.to_json(), offset=8, key=CHAIN.encode())])
    assert app.refused == 1 and app.appended == 1
    (letter,) = dead.sent
    assert letter["topic"] == KafkaSettings().topic_deadletter and letter["value"] == (raw or b"")
    assert why in letter["headers"][H_DLQ_REASON].decode(), letter["headers"][H_DLQ_REASON]
    assert [r.subject for r in trail.store.read()[CHAIN][0]] == ["u-ok"]


def test_the_submitter_refuses_what_the_appender_would_refuse() -> None:
    with pytest.raises(MessageError, match="refusing"):
        to_message(CHAIN, AuditEvent(DECISION_ACTION, subject="u", detail={"score": float("nan")}), "i", "h").to_json()
    # EventSubmitter.submit runs the appender's own check before it sends anything.
    lone = to_message(CHAIN, AuditEvent(DECISION_ACTION, subject="u", reason="\ud800"), "i", "h")
    assert "not a recordable event" in (lone.problem() or "")


def test_a_submitting_trail_holds_no_key_and_cannot_seal(trail: AuditTrail, tmp_path: Path) -> None:
    class Submitter:
        topic = TOPIC

    submitting = AuditTrail(trail.store.client, trail.store.table.split(".")[0], state_dir=tmp_path / "s2",
                            submitter=Submitter())  # type: ignore[arg-type]
    assert submitting.key is None and submitting.key_file is None and submitting.anchor is None
    for action in (submitting.seal, submitting.heartbeat):
        with pytest.raises(ValueError, match="the audit service appends and seals"):
            action()
    assert not (tmp_path / "s2.audit").exists()  # no key file was created
