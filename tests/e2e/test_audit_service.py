"""One audit writer on the embedded broker (docs/audit.md, "One writer"): services submit audit
events to the audit-events topic and the audit service alone appends, signs and seals them.

Against a real Tansu broker: a submitting trail gets its records back from the running service
(signed by the service's key, which the submitter never holds); events submitted while the service
is down are kept and appended when it returns; stopping drains what was submitted and the final
seal covers it; `linesight audit serve` killed with SIGKILL in the middle of a stream of decisions
and started again appends every event exactly once and the trail verifies; a trail without the
anchor file (another container) verifies against the seal topic."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import eventually, scrape

from pipeline.audit.check import TopicSeals
from pipeline.audit.intake import EventSubmitter
from pipeline.audit.record import DECISION_ACTION, SEAL_ACTION, SYSTEM_CHAIN, AuditEvent
from pipeline.audit.seals import AnchorFile, SealStatement, default_audit_dir
from pipeline.audit.sealtopic import read_seal_topic
from pipeline.audit.service import AuditService
from pipeline.audit.trail import AuditNotAppended, AuditTrail
from pipeline.clickhouse import ChdbClient
from pipeline.demo.run import submitting
from pipeline.demo.services import child_env, linesight_command
from pipeline.embedded.process import free_port
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings

TOPICS = ("topic_audit", "topic_audit_events", "topic_audit_seals", "topic_deadletter")


def own_settings(base: Settings, broker: str, tmp_path: Path) -> Settings:
    """Own topics, database, consumer group and state folder on the session's broker."""
    tag = uuid.uuid4().hex[:8]
    k = base.kafka
    settings = base.model_copy(update={
        "kafka": k.model_copy(update={"bootstrap_servers": broker, **{f: f"{getattr(k, f)}-{tag}" for f in TOPICS}}),
        "clickhouse": base.clickhouse.model_copy(update={"database": f"auditsvc_{tag}"}),
        "audit": base.audit.model_copy(update={"appender_group": f"audit-appender-{tag}", "seal_interval_s": 0.3,
                                               "append_timeout_s": 20.0}),
        "state_dir": tmp_path / "state",
    })
    ensure_topics(settings)
    return settings


@pytest.fixture()
def settings(broker: str, embedded_settings: Settings, chdb_client: ChdbClient, tmp_path: Path) -> Settings:
    s = own_settings(embedded_settings, broker, tmp_path)
    chdb_client.apply_schema(s.clickhouse.database)
    return s


@pytest.fixture()
def service(settings: Settings, chdb_client: ChdbClient) -> Iterator[AuditService]:
    svc = AuditService(settings, chdb_client)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def test_services_submit_and_the_audit_service_alone_appends_signs_and_seals(
    settings: Settings, chdb_client: ChdbClient, service: AuditService
) -> None:
    trail = AuditTrail.from_settings(submitting(settings), chdb_client)
    try:
        assert trail.key is None and trail.anchor is None  # a submitter signs nothing and keeps no anchors
        rec = trail.record(AuditEvent("line.start", subject="line-1", user="op", role="operator", reason="shift"))
        assert (rec.chain, rec.seq, rec.action) == (SYSTEM_CHAIN, 0, "line.start")
        key = service.trail.key
        assert key is not None and key.verify_record(rec.record_hash, rec.trail_sig)  # signed by the service
        # The sink's way: decisions handed over without waiting, and the same batch again (a redelivery).
        chain = "decisions/line-1/p0"
        batch = {chain: [AuditEvent(DECISION_ACTION, subject=f"u-{i}", new_value="pass") for i in range(20)]}
        assert trail.submit_many(batch) == 20 and trail.submit_many(batch) == 20

        def heads_anchored() -> bool:  # the heartbeat names both heads
            heads = service.trail.store.heads([SYSTEM_CHAIN, chain])
            anchored = service.trail.anchors()
            return len(heads) == 2 and heads[chain].next_seq >= 20 and all(
                anchored.get(c, {}).get(h.next_seq - 1) == h.hash for c, h in heads.items())

        eventually(heads_anchored, 60, "both chains appended and their heads anchored", poll_s=0.1)
        with pytest.raises(ValueError, match="the audit service appends and seals"):
            trail.seal()
        last = trail.record(AuditEvent("line.stop", subject="line-1", user="op", role="operator", reason="end"))
        # Submitted just before the stop: the drain appends it, the final seal covers it.
        trail.submit_many({chain: [AuditEvent(DECISION_ACTION, subject="u-last", new_value="reject")]})
    finally:
        trail.close()
    final = service.stop()
    assert {s.chain for s in final} == {SYSTEM_CHAIN, chain}
    records = service.trail.store.read()
    decisions = [r.subject for r in records[chain][0] if r.action == DECISION_ACTION]
    assert decisions == [f"u-{i}" for i in range(20)] + ["u-last"]
    system = records[SYSTEM_CHAIN][0]
    assert system[-1].action == SEAL_ACTION and system[-1].seq > last.seq
    report = service.trail.verify()
    assert report.ok, report.to_text()


def test_events_submitted_while_the_audit_service_is_down_are_kept_and_appended_when_it_returns(
    settings: Settings, chdb_client: ChdbClient
) -> None:
    quick = submitting(settings)
    quick = quick.model_copy(update={"audit": quick.audit.model_copy(update={"append_timeout_s": 1.0})})
    trail = AuditTrail.from_settings(quick, chdb_client)
    try:
        with pytest.raises(AuditNotAppended, match="is it running"):
            trail.record(AuditEvent("user.add", subject="quinn", user="ada", role="admin", new_value="qa"))
    finally:
        trail.close()
    assert trail.store.read() == {}  # refused to go on: nothing appended by the submitter itself
    svc = AuditService(settings, chdb_client)
    svc.start()
    try:
        eventually(lambda: [r.subject for r in svc.trail.store.read().get(SYSTEM_CHAIN, ([], None))[0]
                            if r.action == "user.add"] == ["quinn"], 60, "the kept event appended", poll_s=0.1)
    finally:
        svc.stop()
    assert svc.trail.verify().ok


def test_verify_from_a_container_without_the_anchor_file_reads_the_seal_topic(
    settings: Settings, chdb_client: ChdbClient, service: AuditService
) -> None:
    elsewhere = submitting(settings)
    with pytest.raises(ValueError, match="audit.seal_public_key"):
        AuditTrail.from_settings(elsewhere, chdb_client).verify()
    key = service.trail.key
    assert key is not None
    # Every container carries the pinned public key (compose: AUDIT_SEAL_PUBLIC_KEY), never the private one.
    elsewhere = elsewhere.model_copy(update={"audit": elsewhere.audit.model_copy(
        update={"seal_public_key": key.public_hex})})
    trail = AuditTrail.from_settings(elsewhere, chdb_client)
    try:
        trail.record(AuditEvent("alarm.acknowledge", subject="a-1", user="op", role="operator", reason="seen"))
        eventually(lambda: service.trail.anchors().get(SYSTEM_CHAIN), 60, "a heartbeat of the system chain")
        statements, damaged = read_seal_topic(settings.kafka, settings.kafka.topic_audit_seals, 30)
        report = trail.verify(topic=TopicSeals(settings.kafka.topic_audit_seals, statements, damaged))
    finally:
        trail.close()
    assert report.ok, report.to_text()
    assert any("no anchor file on this host" in n for n in report.anchor_notes)
    assert not report.anchor_findings


def _anchored_heads(settings: Settings) -> int:
    """Records the running service has appended, as its heartbeats name them in its anchor file (a
    plain file: this process cannot open the service's chDB folder)."""
    anchor = AnchorFile(default_audit_dir(settings.state_dir) / "anchors", settings.clickhouse.database)
    return sum(max(seqs) + 1 for seqs in _heads(anchor.read()[0]).values())


def _heads(statements: list[SealStatement]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for st in statements:
        out.setdefault(st.chain, []).append(st.head_seq)
    return out


def test_the_audit_service_killed_mid_stream_appends_every_event_exactly_once(
    broker: str, embedded_settings: Settings, tmp_path: Path
) -> None:
    """SIGKILL between any insert and its commit: the redelivered events are recognised by their ids.
    The service runs as `linesight audit serve` with its own chDB folder (one process per folder)."""
    settings = own_settings(embedded_settings, broker, tmp_path)
    port = free_port()
    env = child_env(settings) | {"LINESIGHT_SERVICES__AUDIT_HEALTH_PORT": str(port)}
    log = (tmp_path / "serve.log").open("ab")

    def serve() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*linesight_command(), "audit", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)

    chains = ["decisions/line-1/p0", "decisions/line-1/p1"]
    submitter = EventSubmitter(settings)
    sent = 0

    def submit(n: int) -> None:
        nonlocal sent
        for _ in range(n // 10):
            submitter.submit({c: [AuditEvent(DECISION_ACTION, subject=f"u-{sent + i}", new_value="pass")
                                  for i in range(10)] for c in chains})
            sent += 10

    proc = serve()
    try:
        submit(300)
        eventually(lambda: _anchored_heads(settings) >= 100, 90, "the service appending", poll_s=0.05)
        proc.send_signal(signal.SIGKILL)  # mid-stream: inserted, maybe not committed
        assert proc.wait(30) == -signal.SIGKILL
        submit(100)
        proc = serve()
        eventually(lambda: (tmp_path / "serve.log").read_text(errors="replace").count("audit-appender assigned") == 2,
                   60, "the restarted service in its group", poll_s=0.1)

        def appended() -> float:  # its /metrics, as Prometheus scrapes it
            try:
                return scrape(f"http://127.0.0.1:{port}/metrics").get(
                    ("linesight_audit_events_total", (("outcome", "appended"),)), 0.0)
            except OSError:
                return 0.0

        eventually(lambda: appended() > 0, 60, "the restarted service appending, on its /metrics", poll_s=0.1)
        proc.send_signal(signal.SIGTERM)  # appends what is left on the events topic, then the final seal
        assert proc.wait(120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        submitter.close()
        if proc.poll() is None:
            proc.kill()
        log.close()
    count = subprocess.run(
        [*linesight_command()[:1], "-c",
         "import json; from pipeline.clickhouse import connect; from pipeline.settings import Settings; s = Settings(); "
         "c = connect(s); print(json.dumps(c.query(f'SELECT chain, count(), uniqExact(subject) FROM "
         "{s.clickhouse.database}.audit_records WHERE action = \\'inspection.decision\\' GROUP BY chain "
         "ORDER BY chain').rows))"],
        env=env, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(count.stdout.strip().splitlines()[-1]) == [[c, 400, 400] for c in chains]
    verify = subprocess.run([*linesight_command(), "audit", "verify"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
