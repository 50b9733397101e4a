"""A trail written before signing existed (no ``trail_sig``): `verify` reports its unsigned prefix as
a distinct finding ("N records before signing began"), neither passing silently nor calling it
forged; `linesight audit adopt-legacy` records who vouched for it (a signed record in the system
chain and an anchored signed seal of the prefix head), after which verify passes and names the
adoption. Changing an adopted record is still caught."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import cli_database

from pipeline.audit.record import ADOPT_ACTION, SEAL_ACTION, SYSTEM_CHAIN, AuditEvent
from pipeline.audit.trail import AuditTrail
from pipeline.auth.users import UserStore
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.settings import Settings

CHAIN = "decisions/line-old/p0"


@pytest.fixture()
def legacy(
    embedded_settings: Settings, chdb_client: ChdbClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, AuditTrail, list[str]]]:
    """A database whose system chain (4 records + an unsigned seal) and one decision chain (5
    records + an unsigned seal) were written by a trail without a key; then the signed trail."""
    db = cli_database("legacy", embedded_settings, chdb_client, monkeypatch)
    monkeypatch.delenv("LINESIGHT_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    old = AuditTrail(chdb_client, db, seal_every=4)  # no state folder, no key: the pre-signing trail
    assert old.key is None
    old.append(SYSTEM_CHAIN, [AuditEvent("line.start", subject=f"line-{i}", reason="old") for i in range(4)])
    old.append(CHAIN, [AuditEvent("inspection.decision", subject=f"u{i}", new_value="pass") for i in range(5)])
    UserStore(chdb_client, db).add("quinn", "qa", "quinn-pass-1", "test")
    (tmp_path / "q.pw").write_text("quinn-pass-1\n")
    trail = AuditTrail(chdb_client, db, state_dir=embedded_settings.state_dir, seal_every=1000)
    yield db, trail, ["--user", "quinn", "--password-file", str(tmp_path / "q.pw")]


def test_unsigned_prefix_is_a_distinct_finding_until_adopted(
    legacy: tuple[str, AuditTrail, list[str]], chdb_client: ChdbClient, capsys: pytest.CaptureFixture[str]
) -> None:
    db, trail, qa = legacy
    seals = {r.chain: r.seq for r in trail.store.by_action(SEAL_ACTION)}
    assert seals == {SYSTEM_CHAIN: 4, CHAIN: 5}
    report = trail.verify()
    by_chain = {c.chain: c for c in report.chains}
    for chain, n in ((SYSTEM_CHAIN, 5), (CHAIN, 6)):
        brk = by_chain[chain].broken
        assert brk is not None and brk.kind == "legacy" and brk.record_id == f"{chain}#0", brk
        assert f"{n} record(s) before signing began (unsigned, sealed only by hash)" in brk.message
        assert "adopt-legacy" in brk.message and "forged" not in brk.message

    # Signed appends after the upgrade: their signatures chain back over the old records, yet the
    # unsigned prefix (up to the last unsigned seal record) is still reported, not silently passed.
    trail.append(CHAIN, [AuditEvent("inspection.decision", subject="u-new", new_value="pass")])
    brk = next(c for c in trail.verify(chain=CHAIN).chains if c.chain == CHAIN).broken
    assert brk is not None and brk.kind == "legacy" and "6 record(s) before signing began" in brk.message
    assert main(["audit", "verify"]) == 1
    assert "before signing began" in capsys.readouterr().out

    # Adoption needs a QA user, a password and a reason.
    assert main(["audit", "adopt-legacy", "--reason", "reviewed in CC-2026-7", "--user", "quinn",
                 "--password-file", "/nonexistent"]) != 0
    capsys.readouterr()
    assert main(["audit", "adopt-legacy", "--reason", "reviewed in CC-2026-7: lots 1-4 released", *qa]) == 0
    out = capsys.readouterr().out
    assert f"adopted {SYSTEM_CHAIN}#0..4" in out and f"adopted {CHAIN}#0..5" in out and "audit trail: OK" in out

    adoptions = trail.store.by_action(ADOPT_ACTION)
    assert {r.subject for r in adoptions} == {SYSTEM_CHAIN, CHAIN}
    assert all(r.chain == SYSTEM_CHAIN and r.user == "quinn" and r.role == "qa" and "CC-2026-7" in r.reason
               for r in adoptions)
    anchored = trail.anchors()
    assert anchored[CHAIN][5] == trail.store.get(CHAIN, 5)[0].record_hash
    report = trail.verify()
    assert report.ok, report.to_text()
    text = report.to_text()
    record = next(r for r in adoptions if r.subject == CHAIN).record_id
    assert f"6 record(s) before signing began (unsigned, sealed only by hash), adopted at {record} by quinn (qa)" in text
    assert main(["audit", "verify"]) == 0
    assert f"adopted at {record} by quinn" in capsys.readouterr().out
    assert main(["audit", "adopt-legacy", "--reason", "again", *qa]) == 0
    assert "no unsigned legacy prefix to adopt" in capsys.readouterr().out

    # An adopted prefix is still hash-chained: changing one of its records is caught.
    chdb_client.command(f"ALTER TABLE {db}.audit_records UPDATE new_value = 'reject' WHERE chain = '{CHAIN}' "
                        f"AND seq = 2", settings={"mutations_sync": 2})
    brk = trail.verify(chain=CHAIN).first_break
    assert brk is not None and brk.kind == "changed" and brk.record_id == f"{CHAIN}#2"


def test_a_chain_whose_signatures_were_stripped_is_not_legacy(
    legacy: tuple[str, AuditTrail, list[str]], chdb_client: ChdbClient
) -> None:
    """A signed chain with an anchored seal, its signatures removed: anchors exist only since
    signing, so this is reported as unsigned (tampering), not as a legacy prefix to adopt."""
    db, trail, _ = legacy
    chain = "decisions/line-new/p0"
    trail.append(chain, [AuditEvent("inspection.decision", subject=f"n{i}") for i in range(3)])
    assert [s.head_seq for s in trail.heartbeat([chain])] == [2]
    chdb_client.command(f"ALTER TABLE {db}.audit_records UPDATE trail_sig = '' WHERE chain = '{chain}'",
                        settings={"mutations_sync": 2})
    brk = trail.verify(chain=chain).first_break
    assert brk is None or brk.kind != "legacy"
    # The anchored seal still covers #0..2; a record appended by SQL after it has no signature.
    head = trail.store.get(chain, 2)[0]
    from dataclasses import replace

    trail.store.insert([replace(head, seq=3, prev_hash=head.record_hash, subject="forged", trail_sig="").sealed()])
    brk = trail.verify(chain=chain).first_break
    assert brk is not None and brk.kind == "unsigned" and brk.record_id == f"{chain}#3"
