"""An insider who may write the database and the state folder, but holds no trail key, cannot
rewrite the trail unseen (issue 13): each of the six attacks is caught by `verify` and by
`linesight audit verify`'s exit code, with a reason that names what was found."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import cli_database

from pipeline.audit.record import DECISION_ACTION, SEAL_ACTION, AuditEvent, AuditRecord
from pipeline.audit.seals import SealStatement, TrailKey, default_audit_dir
from pipeline.audit.trail import AuditTrail
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.clickhouse.sql import quote_literal
from pipeline.settings import Settings


@dataclass
class Scene:
    db: str
    chain: str
    trail: AuditTrail
    client: ChdbClient
    state_dir: Path

    @property
    def table(self) -> str:
        return f"{self.db}.audit_records"

    def records(self) -> dict[int, AuditRecord]:
        return {r.seq: r for r in self.trail.store.read(self.chain)[self.chain][0]}

    def tamper(self, statement: str) -> None:
        """The insider's SQL; ``WHERE_CHAIN`` stands for this chain's condition."""
        where = f"chain = {quote_literal(self.chain)}"
        self.client.command(statement.replace("WHERE_CHAIN", where), settings={"mutations_sync": 2})

    def replace_records(self, records: list[AuditRecord], from_seq: int) -> None:
        self.tamper(f"DELETE FROM {self.table} WHERE WHERE_CHAIN AND seq >= {int(from_seq)}")
        self.trail.store.insert(records)

    def broken(self, kind: str, record_id: str, capsys: pytest.CaptureFixture[str]) -> str:
        """Assert verify and the CLI both fail at ``record_id`` with ``kind``; the reason."""
        report = self.trail.verify(chain=self.chain)
        brk = report.first_break
        assert not report.ok and brk is not None, report.to_text()
        assert (brk.kind, brk.record_id) == (kind, record_id), brk
        capsys.readouterr()
        assert main(["audit", "verify", "--chain", self.chain]) == 1
        captured = capsys.readouterr()
        assert f"first broken link: {record_id}" in captured.err and brk.message in captured.out
        return brk.message


@pytest.fixture()
def scene(
    embedded_settings: Settings, chdb_client: ChdbClient, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Scene]:
    """A decision chain: units u0..u5 (a seal record after them, #6), then u6..u8 (#7..9), then a
    heartbeat seal naming #9; the in-process CLI sees the same database and key."""
    db = cli_database("tamper", embedded_settings, chdb_client, monkeypatch)
    monkeypatch.setenv("LINESIGHT_AUDIT__SEAL_EVERY", "4")
    trail = AuditTrail(chdb_client, db, state_dir=embedded_settings.state_dir, seal_every=4)
    chain = "decisions/line-1/p0"

    def decisions(units: range) -> list[AuditEvent]:
        return [AuditEvent(DECISION_ACTION, subject=f"u{i}", user="worker:w1", new_value="reject" if i == 2 else "pass",
                           detail={"unit_id": f"u{i}", "verdict": "reject" if i == 2 else "pass"}) for i in units]

    trail.append(chain, decisions(range(6)))
    trail.append(chain, decisions(range(6, 9)))
    assert [s.head_seq for s in trail.heartbeat()] == [9]
    s = Scene(db, chain, trail, chdb_client, embedded_settings.state_dir)
    recs = s.records()
    assert sorted(recs) == list(range(10)) and recs[6].action == SEAL_ACTION
    assert trail.verify(chain=chain).ok
    yield s


def test_edited_record(scene: Scene, capsys: pytest.CaptureFixture[str]) -> None:
    scene.tamper(f"ALTER TABLE {scene.table} UPDATE new_value = 'pass' WHERE WHERE_CHAIN AND seq = 2")
    assert "was changed" in scene.broken("changed", f"{scene.chain}#2", capsys)


def test_deleted_record(scene: Scene, capsys: pytest.CaptureFixture[str]) -> None:
    scene.tamper(f"DELETE FROM {scene.table} WHERE WHERE_CHAIN AND seq = 3")
    assert f"{scene.chain}#3..3 deleted" in scene.broken("deleted", f"{scene.chain}#4", capsys)


def test_reordered_records(scene: Scene, capsys: pytest.CaptureFixture[str]) -> None:
    recs = scene.records()
    a = replace(recs[3], seq=2, prev_hash=recs[1].record_hash).sealed()
    b = replace(recs[2], seq=3, prev_hash=a.record_hash).sealed()
    scene.replace_records([a, b, *[recs[i] for i in range(4, 10)]], 2)
    assert "does not follow its predecessor" in scene.broken("link", f"{scene.chain}#4", capsys)


def test_forged_append_with_a_correct_hash(scene: Scene, capsys: pytest.CaptureFixture[str]) -> None:
    head = scene.records()[9]
    forged = AuditRecord(scene.chain, 10, head.time, "worker:w1", "system", DECISION_ACTION, "u99", "", "pass",
                         "", "{}", head.record_hash).sealed()
    scene.trail.store.insert([forged])
    assert "no trail signature" in scene.broken("unsigned", f"{scene.chain}#10", capsys)
    # The sealer does not vouch for it, and a signature copied from a genuine record does not verify.
    assert scene.trail.heartbeat() == []
    scene.replace_records([replace(forged, trail_sig=head.trail_sig)], 10)
    assert "does not verify" in scene.broken("signature", f"{scene.chain}#10", capsys)


def test_truncated_tail_after_the_last_seal(scene: Scene, capsys: pytest.CaptureFixture[str]) -> None:
    # The last seal record is #6; #7..9 are covered only by the heartbeat seal.
    scene.tamper(f"DELETE FROM {scene.table} WHERE WHERE_CHAIN AND seq >= 7")
    msg = scene.broken("anchor", f"{scene.chain}#9", capsys)
    assert "tail truncated" in msg and "the chain ends at seq 6" in msg


def test_full_rewrite_with_recomputed_hashes_and_seal_files(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reject of u2 becomes a pass; every later hash, the seal record, a state-folder seals
    file and the anchor file are rewritten, the anchors signed with the insider's own key."""
    recs = scene.records()
    out: list[AuditRecord] = []
    prev = recs[1].record_hash
    for seq in range(2, 10):
        r = recs[seq]
        if seq == 2:
            r = replace(r, new_value="pass", detail=json.dumps({"unit_id": "u2", "verdict": "pass"},
                                                              separators=(",", ":"), sort_keys=True))
        if r.action == SEAL_ACTION:
            r = replace(r, new_value=prev)
        r = replace(r, prev_hash=prev, trail_sig="").sealed()
        out.append(r)
        prev = r.record_hash
    scene.replace_records(out, 2)
    priv = Ed25519PrivateKey.generate()
    mallory = TrailKey(priv.public_key(), priv)
    forged = [SealStatement(scene.chain, r.seq, r.record_hash, "2026-01-01T00:00:00.000000Z", r.seq + 1,
                            mallory.key_id).signed(mallory) for r in out if r.seq in (6, 9)]
    assert scene.trail.anchor is not None
    scene.trail.anchor.path.write_text("".join(s.to_json().decode() + "\n" for s in forged))
    legacy = scene.state_dir / "audit" / scene.db / "seals.jsonl"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text("".join(json.dumps({"chain": s.chain, "seq": s.head_seq, "hash": s.head_hash}) + "\n"
                              for s in forged))
    # #6 signed the batch #0..6 and #9 the next: with both signatures gone nothing is authenticated.
    assert f"{scene.chain}#0..9 carry no trail signature" in scene.broken("unsigned", f"{scene.chain}#0", capsys)
    _, bad = scene.trail.anchored()
    assert len(bad) == 2 and all("does not verify with the trail key" in b.message for b in bad)
    # Keeping the old signatures instead: the first one after the edit no longer verifies.
    scene.replace_records([replace(r, trail_sig=recs[r.seq].trail_sig) for r in out], 2)
    assert "rewritten after it was signed" in scene.broken("signature", f"{scene.chain}#6", capsys)


def test_the_key_is_not_in_the_database_or_the_state_folder(scene: Scene) -> None:
    key_file = scene.trail.key_file
    assert key_file is not None and key_file.parent == default_audit_dir(scene.state_dir)
    assert scene.state_dir.resolve() not in key_file.resolve().parents
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,  # type: ignore[union-attr]
                                serialization.NoEncryption())
    needles = [raw, raw.hex().encode(), key_file.read_bytes().split(b"\n")[1]]
    for root, _, files in os.walk(scene.state_dir):
        for name in files:
            data = (Path(root) / name).read_bytes()
            assert not any(n in data for n in needles), Path(root) / name
    rows = scene.client.query(f"SELECT * FROM {scene.table}").rows
    assert not any(raw.hex() in str(v) for row in rows for v in row)
    # A key or anchor folder inside the state folder is refused.
    with pytest.raises(ValueError, match="inside the state folder"):
        AuditTrail(scene.client, scene.db, state_dir=scene.state_dir, key_file=scene.state_dir / "seal.key")
    with pytest.raises(ValueError, match="inside the state folder"):
        AuditTrail(scene.client, scene.db, state_dir=scene.state_dir, anchor_dir=scene.state_dir / "anchors")
