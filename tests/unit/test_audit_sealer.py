"""The sealer runs with the embedded stack (pipeline.demo.run.EmbeddedSealer): signed heartbeat seals
of every chain while it runs, and a final seal at shutdown that covers what was appended last."""

from __future__ import annotations

from pathlib import Path

from support import eventually

from pipeline.audit.record import SEAL_ACTION, SYSTEM_CHAIN, AuditEvent
from pipeline.audit.trail import AuditTrail
from pipeline.clickhouse.chdb_backend import ChdbClient
from pipeline.demo.run import EmbeddedSealer

LINE_CHAIN = "line-1:0"


def test_the_embedded_sealer_anchors_heartbeats_and_a_final_seal(chdb_client: ChdbClient, tmp_path: Path) -> None:
    db = "sealer_test"
    chdb_client.apply_schema(db)
    trail = AuditTrail(chdb_client, db, state_dir=tmp_path / "state", seal_interval_s=0.2,
                       key_file=tmp_path / "keys" / "seal.key", anchor_dir=tmp_path / "anchors")
    trail.record(AuditEvent("line.start", subject="line-1", reason="test"))
    trail.append(LINE_CHAIN, [AuditEvent("inspection.decision", subject=f"u-{i}") for i in range(3)])
    heads = trail.store.heads([SYSTEM_CHAIN, LINE_CHAIN])

    sealer = EmbeddedSealer(trail)
    sealer.start()
    try:
        def heads_sealed() -> bool:  # a heartbeat names each head, with nothing appended since
            anchored = trail.anchors()
            return all(anchored.get(c, {}).get(h.next_seq - 1) == h.hash for c, h in heads.items())

        eventually(heads_sealed, 30, f"a heartbeat seal of the heads {heads}", poll_s=0.05)
        last = trail.record(AuditEvent("line.stop", subject="line-1", reason="test"))
    finally:
        final = sealer.stop()
    assert not sealer.alive

    # The final seal: a seal record after the last append, signed and anchored, for every chain.
    assert {s.chain for s in final} == {SYSTEM_CHAIN, LINE_CHAIN}
    end = trail.store.heads([SYSTEM_CHAIN])[SYSTEM_CHAIN]
    assert end.next_seq - 1 > last.seq
    (sealed,) = trail.store.get(SYSTEM_CHAIN, end.next_seq - 1)
    assert sealed.action == SEAL_ACTION
    assert trail.anchors()[SYSTEM_CHAIN][end.next_seq - 1] == end.hash
    report = trail.verify()
    assert report.ok, report.to_text()
