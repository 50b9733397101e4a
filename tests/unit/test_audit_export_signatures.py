"""`verify-export` checks the trail signatures and the seal statements of a bundle with the public
key (given, or listed in the manifest): a record altered and re-hashed consistently (file and
manifest hashes recomputed too), or a record stripped of its signature, fails naming the record."""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.audit.export import export_trail, verify_export
from pipeline.audit.record import SEAL_ACTION, AuditEvent, AuditRecord
from pipeline.audit.trail import AuditTrail
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.core.hashing import sha256_file

CHAIN = "decisions/line-e/p0"


@pytest.fixture()
def bundle(chdb_client: ChdbClient, tmp_path: Path) -> tuple[AuditTrail, Path]:
    db = f"export_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    trail = AuditTrail(chdb_client, db, state_dir=tmp_path / "state", seal_every=4)
    trail.append(CHAIN, [AuditEvent("inspection.decision", subject=f"u{i}", new_value="pass") for i in range(3)])
    trail.append(CHAIN, [AuditEvent("inspection.decision", subject=f"u{i}", new_value="reject") for i in range(3, 6)])
    trail.record(AuditEvent("line.stop", subject="line-e", reason="end of lot"))
    trail.heartbeat()
    out = tmp_path / "export"
    assert export_trail(trail, out)["verification_at_export"]["ok"]
    return trail, out


def rewrite(folder: Path, change: Callable[[list[AuditRecord]], list[AuditRecord]]) -> None:
    """The records rewritten, the file and manifest hashes recomputed: only signatures can tell."""
    path = folder / "audit_records.csv"
    with path.open(newline="") as f:
        records = [AuditRecord.from_mapping(r) for r in csv.DictReader(f)]
    records = change(records)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0].to_text_row()), lineterminator="\n")
        w.writeheader()
        w.writerows(r.to_text_row() for r in records)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = sha256_file(path)
    for c in manifest["chains"].values():
        c["head_hash"] = next(r.record_hash for r in records
                              if r.seq == c["head_seq"] and (r.chain in manifest["chains"]) and
                              manifest["chains"][r.chain] is c)
    text = json.dumps(manifest, indent=2, sort_keys=True)
    (folder / "manifest.json").write_text(text)
    (folder / "manifest.json.sha256").write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  manifest.json\n")


def test_a_clean_bundle_verifies_with_the_given_or_listed_key(
    bundle: tuple[AuditTrail, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    trail, out = bundle
    assert trail.verify_key is not None
    check = verify_export(out, trail.verify_key.public_hex)
    assert check.ok, check.to_text()
    assert "given public key" in check.to_text()
    listed = verify_export(out)
    assert listed.ok and "public key in the export" in listed.to_text()
    assert (out / "seals.jsonl").read_text().count("\n") == len(trail.anchor.read()[0])  # type: ignore[union-attr]
    assert main(["audit", "verify-export", str(out), "--public-key", trail.verify_key.public_hex]) == 0
    assert "export: OK" in capsys.readouterr().out


def test_a_tampered_record_with_recomputed_hashes_fails_on_its_signature(bundle: tuple[AuditTrail, Path]) -> None:
    trail, out = bundle
    assert trail.verify_key is not None

    def flip(records: list[AuditRecord]) -> list[AuditRecord]:
        out_records: list[AuditRecord] = []
        prev = None
        for r in sorted(records, key=lambda r: (r.chain, r.seq)):
            if r.chain == CHAIN and r.seq >= 4:
                if r.seq == 4:
                    r = replace(r, new_value="pass")
                r = replace(r, prev_hash=prev or r.prev_hash)
                if r.action == SEAL_ACTION:  # the insider keeps the seal record consistent too
                    r = replace(r, new_value=r.prev_hash)
                r = r.sealed()
            out_records.append(r)
            prev = r.record_hash if r.chain == CHAIN else prev
        return out_records

    rewrite(out, flip)
    check = verify_export(out, trail.verify_key.public_hex)
    assert not check.ok
    assert check.report is not None and check.report.first_break is not None
    brk = check.report.first_break
    assert brk.kind == "signature" and brk.record_id.startswith(f"{CHAIN}#"), brk
    assert f"first broken link: {brk.record_id} (signature)" in check.to_text()


def test_a_removed_signature_fails_naming_the_record(bundle: tuple[AuditTrail, Path]) -> None:
    trail, out = bundle
    assert trail.verify_key is not None
    # Strip the signatures and drop the seals: nothing authenticates the decision chain any more.
    rewrite(out, lambda rs: [replace(r, trail_sig="") if r.chain == CHAIN else r for r in rs])
    (out / "seals.jsonl").write_text("")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["seals"].update(sha256=sha256_file(out / "seals.jsonl"), statements=0)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "manifest.json.sha256").unlink()
    check = verify_export(out, trail.verify_key.public_hex)
    assert not check.ok
    brk = check.report.first_break if check.report else None
    assert brk is not None and brk.chain == CHAIN and brk.kind in ("unsigned", "legacy"), brk
    assert f"first broken link: {CHAIN}#0" in check.to_text()


def test_a_forged_seal_statement_fails(bundle: tuple[AuditTrail, Path]) -> None:
    trail, out = bundle
    assert trail.verify_key is not None
    lines = (out / "seals.jsonl").read_text().splitlines()
    doc = json.loads(lines[0])
    doc["head_hash"] = "0" * 64
    lines[0] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    (out / "seals.jsonl").write_text("\n".join(lines) + "\n")
    check = verify_export(out, trail.verify_key.public_hex)
    assert not check.ok
    assert any("seals.jsonl: sha256" in p for p in check.problems)
    assert any(f"seal statement of {doc['chain']}#{doc['head_seq']}" in p and "does not verify" in p
               for p in check.problems), check.problems
