"""`linesight audit verify|sign|export|verify-export`: signatures bound to the record hash, the
first broken link named with a non-zero exit, and an export an auditor verifies offline."""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import cli_database

from pipeline.audit.record import AuditEvent
from pipeline.audit.trail import AuditTrail
from pipeline.auth.users import UserStore
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.settings import Settings


@pytest.fixture()
def gmp(
    embedded_settings: Settings, chdb_client: ChdbClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, AuditTrail, list[str]]]:
    """A fresh database with a QA user; the in-process CLI uses it. Yields (db, trail, auth args)."""
    db = cli_database("gmp", embedded_settings, chdb_client, monkeypatch)
    monkeypatch.setenv("LINESIGHT_AUDIT__SEAL_EVERY", "5")
    UserStore(chdb_client, db).add("quinn", "qa", "quinn-pass-1", "test")
    UserStore(chdb_client, db).add("otto", "operator", "otto-pass-1", "test")
    (tmp_path / "q.pw").write_text("quinn-pass-1\n")
    (tmp_path / "o.pw").write_text("otto-pass-1\n")
    trail = AuditTrail(chdb_client, db, state_dir=embedded_settings.state_dir, seal_every=5)
    yield db, trail, ["--user", "quinn", "--password-file", str(tmp_path / "q.pw")]


def test_signature_is_bound_to_the_record_hash(
    gmp: tuple[str, AuditTrail, list[str]], chdb_client: ChdbClient, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db, trail, qa = gmp
    rec = trail.record(AuditEvent("threshold.change", subject="tablet", user="quinn", role="qa",
                                  old_value="0.5", new_value="0.45", reason="validation run 12"))
    # The signer states the hash they reviewed: another hash is refused (and audited).
    assert main(["audit", "sign", rec.record_id, "--meaning", "approved", "--hash", "00ff", *qa]) == 1
    assert "is not the record reviewed" in capsys.readouterr().err
    # An operator may not sign.
    op = ["--user", "otto", "--password-file", str(tmp_path / "o.pw")]
    assert main(["audit", "sign", rec.record_id, "--meaning", "reviewed", *op]) == 1
    assert "may not audit.sign" in capsys.readouterr().err
    assert main(["audit", "sign", rec.record_id, "--meaning", "approved", "--hash", rec.record_hash[:12], *qa]) == 0
    assert f"bound to hash {rec.record_hash}" in capsys.readouterr().out
    assert main(["audit", "verify", "--chain", "system"]) == 0
    out = capsys.readouterr().out
    assert f"approved  by quinn (qa) on {rec.record_id}" in out and "valid" in out

    # Change the signed record behind the application's back: the chain and the signature fail.
    chdb_client.command(
        f"ALTER TABLE {db}.audit_records UPDATE new_value = '0.30' WHERE chain = 'system' AND seq = {rec.seq}",
        settings={"mutations_sync": 2},
    )
    assert main(["audit", "verify", "--chain", "system"]) == 1
    captured = capsys.readouterr()
    assert f"first broken link: {rec.record_id}" in captured.err
    assert "INVALID: record" in captured.out and "changed since it was signed" in captured.out
    # Signing the changed record is refused, and the refusal is audited.
    assert main(["audit", "sign", rec.record_id, "--meaning", "reviewed", *qa]) == 1
    assert "was changed after it was written" in capsys.readouterr().err
    reasons = [r[0] for r in chdb_client.query(
        f"SELECT reason FROM {db}.audit_records WHERE action = 'access.refused'").rows]
    assert any("changed after it was written" in r for r in reasons)
    assert any("is not the record reviewed" in r for r in reasons)


def test_verify_names_the_first_broken_link(
    gmp: tuple[str, AuditTrail, list[str]], chdb_client: ChdbClient, capsys: pytest.CaptureFixture[str]
) -> None:
    db, trail, _ = gmp
    chain = f"decisions/line-x{uuid.uuid4().hex[:4]}/p0"
    trail.append(chain, [AuditEvent("inspection.decision", subject=f"u{i}", new_value="pass") for i in range(4)])
    assert main(["audit", "verify", "--chain", chain, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    chdb_client.command(f"DELETE FROM {db}.audit_records WHERE chain = '{chain}' AND seq = 1")
    assert main(["audit", "verify"]) == 1
    captured = capsys.readouterr()
    assert f"first broken link: {chain}#2" in captured.err and "BROKEN" in captured.out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_verifies_offline(
    gmp: tuple[str, AuditTrail, list[str]], tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, trail, qa = gmp
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - e.g. a pyarrow built for NumPy 2 (the project pins NumPy 1)
            pytest.skip(f"no usable pyarrow: {exc}")
    rec = trail.record(AuditEvent("recipe.change", subject="tablet", user="quinn", role="qa", new_value="r2",
                                  reason="new supplier", detail={"speed": 1.5}))
    assert main(["audit", "sign", rec.record_id, "--meaning", "reviewed", *qa]) == 0
    assert main(["audit", "seal"]) == 0
    out = tmp_path / f"export-{fmt}"
    assert main(["audit", "export", "--out", str(out), "--format", fmt]) == 1  # who exports is recorded
    assert "needs --user" in capsys.readouterr().err
    assert main(["audit", "export", "--out", str(out), "--format", fmt, "--reason", "inspection 2026", *qa]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chains"]["system"]["records"] >= 3 and manifest["files"][0]["name"] == f"audit_records.{fmt}"
    capsys.readouterr()
    assert main(["audit", "verify-export", str(out)]) == 0
    assert "export: OK" in capsys.readouterr().out
    if fmt != "csv":
        return
    # Edit one record in the exported file: the file hash no longer matches and the chain breaks.
    path = out / "audit_records.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    rows[1]["reason"] = "edited"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    assert main(["audit", "verify-export", str(out)]) == 1
    text = capsys.readouterr().out
    assert "sha256" in text and "manifest says" in text and "was changed" in text
