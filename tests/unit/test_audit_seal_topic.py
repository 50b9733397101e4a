"""`audit verify` against the seal topic ``linesight.audit-seals`` (an embedded Tansu broker of this
module): every signed statement is read back from the beginning with an assign()-based consumer,
checked against the chains like the anchor file, and a statement one copy holds and the other does
not is reported; the sealer's mirror copies the topic into its anchor file."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import eventually

from pipeline.audit.check import TopicSeals
from pipeline.audit.publish import AuditPublisher
from pipeline.audit.record import SYSTEM_CHAIN, AuditEvent
from pipeline.audit.seals import AnchorFile
from pipeline.audit.sealtopic import SealMirror, SealTopicError, SealTopicReader, read_seal_topic
from pipeline.audit.trail import AuditTrail
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.embedded.broker import TansuBroker
from pipeline.embedded.process import free_port
from pipeline.kafka.topics import ensure_topics, topic_specs
from pipeline.settings import Settings

CHAIN = "decisions/line-k/p0"


@pytest.fixture(scope="module")
def kafka_settings(embedded_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    tansu = TansuBroker(embedded_settings, port=free_port(), log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    tansu.start()
    settings = embedded_settings.model_copy(update={"kafka": embedded_settings.kafka.model_copy(
        update={"bootstrap_servers": tansu.bootstrap_servers})})
    ensure_topics(settings)
    try:
        yield settings
    finally:
        tansu.stop()


@pytest.fixture()
def topic_trail(
    kafka_settings: Settings, chdb_client: ChdbClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[AuditTrail, Settings]]:
    """A trail publishing to its own seal topic (the broker is shared by the module's tests)."""
    db = f"seals_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    topic = f"linesight.audit-seals-{uuid.uuid4().hex[:6]}"
    settings = kafka_settings.model_copy(update={
        "kafka": kafka_settings.kafka.model_copy(update={"topic_audit_seals": topic}),
        "clickhouse": kafka_settings.clickhouse.model_copy(update={"database": db}),
    })
    ensure_topics(settings)
    for name, value in {"LINESIGHT_STATE_DIR": str(settings.state_dir), "LINESIGHT_CLICKHOUSE__DATABASE": db,
                        "LINESIGHT_AUDIT__PUBLISH_TIMEOUT_S": "5", "LINESIGHT_KAFKA__TOPIC_AUDIT_SEALS": topic,
                        "LINESIGHT_KAFKA__BOOTSTRAP_SERVERS": str(settings.kafka.bootstrap_servers)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LINESIGHT_CLICKHOUSE__URL", raising=False)
    publisher = AuditPublisher(settings)
    trail = AuditTrail(chdb_client, db, state_dir=settings.state_dir, publisher=publisher, seal_every=3)
    try:
        yield trail, settings
    finally:
        publisher.close()


def test_the_seal_topic_keeps_its_statements_forever() -> None:
    spec = next(s for s in topic_specs(Settings().kafka) if s.name == Settings().kafka.topic_audit_seals)
    assert spec.config["retention.ms"] == "-1" and spec.config["retention.bytes"] == "-1"
    assert spec.config["cleanup.policy"] == "delete"


def test_verify_reads_the_seal_topic_and_compares_it_with_the_anchor_file(
    topic_trail: tuple[AuditTrail, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    trail, settings = topic_trail
    topic = settings.kafka.topic_audit_seals
    trail.append(CHAIN, [AuditEvent("inspection.decision", subject=f"u{i}") for i in range(4)])  # a seal record
    trail.record(AuditEvent("line.start", subject="line-k", reason="test"))
    trail.heartbeat()
    assert trail.anchor is not None
    in_file, _ = trail.anchor.read()
    assert len(in_file) == 3  # the seal record's statement and two heartbeats

    def all_on_topic() -> list:
        statements, bad = read_seal_topic(settings.kafka, topic, timeout_s=20)
        assert not bad
        return statements if len(statements) == len(in_file) else []

    on_topic = eventually(all_on_topic, 30, f"{len(in_file)} statements on {topic}")
    assert {s.to_json() for s in on_topic} == {s.to_json() for s in in_file}

    seals = TopicSeals(topic, on_topic, grace_s=0)
    report = trail.verify(topic=seals)
    assert report.ok and not report.anchor_notes, report.to_text()
    assert f"topic {topic}: 3 statement(s)" in report.to_text()
    assert main(["audit", "verify"]) == 0  # a broker is configured: the topic is read by default
    assert f"topic {topic}: 3 statement(s)" in capsys.readouterr().out

    # Lines dropped from the anchor file: the topic still holds them; the copies disagree.
    (dropped,) = [s for s in in_file if s.chain == SYSTEM_CHAIN]  # the only seal of the system chain
    trail.anchor.path.write_text("".join(s.to_json().decode() + "\n" for s in in_file if s is not dropped))
    report = trail.verify(topic=seals)
    assert not report.ok
    assert any(f"{dropped.chain}#{dropped.head_seq}" in f and "not in the anchor file" in f
               for f in report.anchor_findings), report.anchor_findings
    # Younger than the sealer's copying interval (2 x audit.seal_interval_s + 60 s): noted, not failed.
    report = trail.verify(topic=TopicSeals(topic, on_topic, grace_s=3600))
    assert report.ok and any("not in the anchor file yet" in n for n in report.anchor_notes)
    assert main(["audit", "verify"]) == 0
    assert "not in the anchor file yet" in capsys.readouterr().out

    # The tail truncated after the last seal the file still holds: only the topic's seal shows it.
    trail.store.client.command(
        f"DELETE FROM {trail.store.table} WHERE chain = '{dropped.chain}' AND seq = {dropped.head_seq}")
    assert trail.verify(topic=None, chain=SYSTEM_CHAIN).ok  # the anchor file alone misses it
    brk = trail.verify(topic=seals, chain=dropped.chain).first_break
    assert brk is not None and brk.kind == "anchor" and "tail truncated" in brk.message


def test_a_statement_only_in_the_anchor_file_is_reported(topic_trail: tuple[AuditTrail, Settings]) -> None:
    trail, settings = topic_trail
    trail.append(CHAIN, [AuditEvent("inspection.decision", subject="u0")])
    trail.publisher = None  # published while the broker was down
    (only_file,) = trail.heartbeat()
    seals = TopicSeals(settings.kafka.topic_audit_seals,
                       read_seal_topic(settings.kafka, settings.kafka.topic_audit_seals, 20)[0], grace_s=0)
    report = trail.verify(topic=seals)
    assert report.ok, report.to_text()
    assert any("in the anchor file are not on the topic" in n and f"{only_file.chain}#{only_file.head_seq}" in n
               for n in report.anchor_notes), report.anchor_notes


def test_the_sealer_copies_the_topic_into_its_anchor_file(
    topic_trail: tuple[AuditTrail, Settings], tmp_path: Path
) -> None:
    """An appender whose anchor folder is not the sealer's (the sink in compose) publishes its seal
    statements; the sealer's mirror copies them, once, and never a statement that does not verify."""
    trail, settings = topic_trail
    trail.append(CHAIN, [AuditEvent("inspection.decision", subject=f"u{i}") for i in range(3)])
    trail.heartbeat()
    assert trail.anchor is not None and trail.key is not None
    theirs, _ = trail.anchor.read()
    sealer_file = AnchorFile(tmp_path / "sealer-anchors", "db")
    mirror = SealMirror(SealTopicReader(settings.kafka, settings.kafka.topic_audit_seals), sealer_file, trail.key,
                        timeout_s=20)
    copied: list[int] = []

    def all_copied() -> bool:
        copied.append(mirror())
        return sum(copied) == len(theirs)

    eventually(all_copied, 30, "the topic copied")
    assert {s.to_json() for s in sealer_file.read()[0]} == {s.to_json() for s in theirs}
    assert mirror() == 0  # nothing twice


def test_an_unreachable_broker_fails_verify_when_the_topic_is_asked_for(
    topic_trail: tuple[AuditTrail, Settings], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trail, settings = topic_trail
    trail.record(AuditEvent("line.start", subject="line-k", reason="test"))
    with pytest.raises(SealTopicError):
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
        read_seal_topic(kafka, settings.kafka.topic_audit_seals, timeout_s=2)
    monkeypatch.setenv("LINESIGHT_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    assert main(["audit", "verify", "--seals-from-kafka", "--kafka-timeout", "2"]) == 1
    captured = capsys.readouterr()
    assert "could not be read" in captured.out and "--no-seals-from-kafka" in captured.out
    assert main(["audit", "verify", "--no-seals-from-kafka"]) == 0
