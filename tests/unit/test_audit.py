"""The audit trail on real chDB: hash chain, seals, and each tampering (change, delete, reorder,
insert) done by direct SQL on the table is caught and the first broken link is named."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.audit.record import GENESIS, SEAL_ACTION, AuditEvent, AuditRecord, parse_record_id
from pipeline.audit.trail import AuditTrail
from pipeline.clickhouse import ChdbClient
from pipeline.settings import Settings


@pytest.fixture()
def trail(embedded_settings: Settings, chdb_client: ChdbClient, tmp_path: Path) -> AuditTrail:
    return AuditTrail(chdb_client, embedded_settings.clickhouse.database, state_dir=tmp_path, seal_every=4)


def _chain(trail: AuditTrail, n: int = 6) -> str:
    chain = f"test-{uuid.uuid4().hex[:8]}"
    trail.append(chain, [AuditEvent("test.event", subject=f"s{i}", user="alice", role="qa", new_value=str(i),
                                    reason="r", detail={"i": i, "x": 0.1}) for i in range(n)])
    return chain


def _table(settings: Settings) -> str:
    return f"{settings.clickhouse.database}.audit_records"


def test_records_are_chained_and_sealed(trail: AuditTrail) -> None:
    chain = _chain(trail, 6)
    records, before = trail.store.read(chain)[chain]
    assert before is None
    assert [r.seq for r in records] == list(range(7))  # 6 events + a seal after 4 unsealed records
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.record_hash for a, b in zip(records, records[1:], strict=False))
    seal = records[-1]
    assert seal.action == SEAL_ACTION and seal.new_value == records[-2].record_hash
    assert trail.anchors()[chain] == {6: seal.record_hash}
    report = trail.verify(chain=chain)
    assert report.ok and report.chains[0].records == 7 and report.chains[0].seals == 1
    # Appending continues the chain from its head.
    trail.append(chain, [AuditEvent("test.event", subject="late")])
    assert trail.verify(chain=chain).ok
    assert trail.store.heads([chain])[chain].next_seq == 8


def test_hash_is_stable_through_clickhouse_and_text(trail: AuditTrail) -> None:
    chain = _chain(trail, 2)
    rec = trail.store.read(chain)[chain][0][0]
    assert rec.compute_hash() == rec.record_hash
    assert AuditRecord.from_mapping(rec.to_text_row()).compute_hash() == rec.record_hash
    assert parse_record_id(rec.record_id) == (chain, 0)
    with pytest.raises(ValueError):
        parse_record_id("nonsense")


def test_changed_record_is_detected(trail: AuditTrail, embedded_settings: Settings, chdb_client: ChdbClient) -> None:
    chain = _chain(trail)
    chdb_client.command(
        f"ALTER TABLE {_table(embedded_settings)} UPDATE reason = 'nothing to see' "
        f"WHERE chain = '{chain}' AND seq = 2", settings={"mutations_sync": 2}
    )
    report = trail.verify(chain=chain)
    assert not report.ok
    brk = report.first_break
    assert brk is not None and brk.kind == "changed" and brk.record_id == f"{chain}#2"
    assert brk.expected in brk.message and brk.found in brk.message


def test_deleted_record_is_detected(trail: AuditTrail, embedded_settings: Settings, chdb_client: ChdbClient) -> None:
    chain = _chain(trail)
    chdb_client.command(f"DELETE FROM {_table(embedded_settings)} WHERE chain = '{chain}' AND seq = 3")
    brk = trail.verify(chain=chain).first_break
    assert brk is not None and brk.kind == "deleted" and brk.record_id == f"{chain}#4"
    assert "#3..3 deleted" in brk.message


def test_deleted_tail_is_caught_by_the_seal_anchor(
    trail: AuditTrail, embedded_settings: Settings, chdb_client: ChdbClient
) -> None:
    chain = _chain(trail)  # seal at seq 6
    chdb_client.command(f"DELETE FROM {_table(embedded_settings)} WHERE chain = '{chain}' AND seq >= 5")
    brk = trail.verify(chain=chain).first_break
    assert brk is not None and brk.kind == "anchor" and brk.record_id == f"{chain}#6"


def test_reordered_records_are_detected(
    trail: AuditTrail, embedded_settings: Settings, chdb_client: ChdbClient
) -> None:
    chain = _chain(trail)
    records = {r.seq: r for r in trail.store.read(chain)[chain][0]}
    # Swap records 2 and 3, re-hashing each so it looks self-consistent; the links cannot match.
    a = replace(records[3], seq=2, prev_hash=records[1].record_hash).sealed()
    b = replace(records[2], seq=3, prev_hash=a.record_hash).sealed()
    chdb_client.command(f"DELETE FROM {_table(embedded_settings)} WHERE chain = '{chain}' AND seq IN (2, 3)")
    trail.store.insert([a, b])
    brk = trail.verify(chain=chain).first_break
    assert brk is not None and brk.kind == "link" and brk.record_id == f"{chain}#4"
    assert records[3].record_hash in brk.message and b.record_hash in brk.message
    # A plain swap of the seq numbers (hashes untouched) is a changed record.
    chain2 = _chain(trail)
    recs2 = {r.seq: r for r in trail.store.read(chain2)[chain2][0]}
    chdb_client.command(f"DELETE FROM {_table(embedded_settings)} WHERE chain = '{chain2}' AND seq IN (1, 2)")
    trail.store.insert([replace(recs2[1], seq=2), replace(recs2[2], seq=1)])
    brk2 = trail.verify(chain=chain2).first_break
    assert brk2 is not None and brk2.kind == "changed" and brk2.record_id == f"{chain2}#1"


def test_inserted_record_is_detected(trail: AuditTrail, embedded_settings: Settings, chdb_client: ChdbClient) -> None:
    chain = _chain(trail)
    records = {r.seq: r for r in trail.store.read(chain)[chain][0]}
    forged = AuditRecord(
        chain, 3, records[3].time, "mallory", "qa", "test.event", "forged", "", "approve", "", "{}",
        records[2].record_hash,
    ).sealed()
    trail.store.insert([forged])
    brk = trail.verify(chain=chain).first_break
    assert brk is not None and brk.kind == "inserted" and brk.record_id == f"{chain}#3"


def test_time_range_verifies_the_span_and_its_first_link(trail: AuditTrail) -> None:
    chain = f"test-{uuid.uuid4().hex[:8]}"
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    trail.append(chain, [AuditEvent("test.event", subject=str(i), time=t0 + timedelta(minutes=i)) for i in range(3)])
    report = trail.verify(chain=chain, time_from=t0 + timedelta(minutes=1), time_to=t0 + timedelta(minutes=1))
    assert report.ok and report.chains[0].records == 1 and report.chains[0].first_seq == 1


def test_line_start_and_stop_are_audited(embedded_settings: Settings, chdb_client: ChdbClient, tmp_path: Path) -> None:
    """`linesight demo`/`up` record who started and stopped the line, in the verified system chain
    (no broker here: the record stays in ClickHouse and the publish failure is only a warning)."""
    from pipeline.demo.run import audit_line

    db = f"lineaudit_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    settings = embedded_settings.model_copy(update={
        "state_dir": tmp_path,
        "clickhouse": embedded_settings.clickhouse.model_copy(update={"database": db}),
        "kafka": embedded_settings.kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:9"}),
        "audit": embedded_settings.audit.model_copy(update={"publish_timeout_s": 1.0}),
    })
    audit_line(settings, chdb_client, "line.start", "linesight demo", rate_per_s=20.0)
    audit_line(settings, chdb_client, "line.stop", "linesight demo: run finished", lot="L-1", published=40)
    rows = chdb_client.query(
        f"SELECT action, subject, role, reason FROM {db}.audit_records WHERE chain = 'system' ORDER BY seq"
    ).rows
    assert [tuple(r) for r in rows] == [
        ("line.start", settings.simulator.line, "system", "linesight demo"),
        ("line.stop", settings.simulator.line, "system", "linesight demo: run finished"),
    ]
    assert AuditTrail.from_settings(settings, chdb_client).verify(chain="system").ok
