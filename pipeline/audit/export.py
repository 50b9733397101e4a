"""Audit export for auditors, verifiable offline (docs/audit.md).

``linesight audit export --out DIR`` writes every record (CSV or Parquet, all fields as stored),
``seals.jsonl`` (the anchored signed seal statements) and ``manifest.json``: the sha256 and count
of each file, each chain's record count, head seq and head hash, the trail's public key and the
verification result at export time; ``manifest.json.sha256`` holds the manifest's own hash, for
the auditor to note elsewhere. ``linesight audit verify-export DIR [--public-key HEX]`` needs no
database: it rechecks the file hashes, every chain (the same code as `audit verify`), every
record's trail signature and every seal statement with the public key (the one given, else the
one in the manifest), the electronic signatures, and that the chains end where the manifest says.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.audit.record import FIELDS, AuditRecord, format_time, utcnow
from pipeline.audit.seals import SealStatement, TrailKey
from pipeline.audit.trail import AuditTrail
from pipeline.audit.verify import VerifyReport, adoptions_from, check_signatures, verify_chain
from pipeline.core.hashing import sha256_file

MANIFEST = "manifest.json"
SEALS = "seals.jsonl"


def _write(records: list[AuditRecord], path: Path, fmt: str) -> None:
    rows = [r.to_text_row() for r in records]
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(FIELDS), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        return
    pa, pq = _pyarrow()
    columns: dict[str, list[str] | list[int]] = {f: [r[f] for r in rows] for f in FIELDS}
    columns["seq"] = [int(v) for v in columns["seq"]]
    schema = pa.schema([(f, pa.int64() if f == "seq" else pa.string()) for f in FIELDS])
    pq.write_table(pa.table(columns, schema=schema), path)


def _read(path: Path) -> list[AuditRecord]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [AuditRecord.from_mapping(row) for row in csv.DictReader(f)]
    _, pq = _pyarrow()
    return [AuditRecord.from_mapping(row) for row in pq.read_table(path).to_pylist()]


def _pyarrow():  # noqa: ANN202
    """pyarrow for Parquet (optional: CSV needs nothing). A clear error when it is missing or unusable."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except Exception as exc:  # noqa: BLE001 - ImportError, or a pyarrow built for another NumPy
        raise RuntimeError(f"Parquet export needs a working pyarrow ({exc}); use --format csv") from None
    return pa, pq


def _check(
    records: list[AuditRecord], anchors: dict[str, dict[int, str]] | None = None, key: TrailKey | None = None,
    statement_seqs: dict[str, set[int]] | None = None,
) -> VerifyReport:
    """``key``: also check the trail signatures (without it only the hashes and links)."""
    by_chain: dict[str, list[AuditRecord]] = {}
    for r in records:
        by_chain.setdefault(r.chain, []).append(r)
    adoptions = adoptions_from(records)
    report = VerifyReport()
    for c in sorted(by_chain):
        report.chains.append(verify_chain(c, by_chain[c], anchors=(anchors or {}).get(c), key=key, to_head=True,
                                          adoption=adoptions.get(c), statement_seqs=(statement_seqs or {}).get(c, ())))
    report.signatures = check_signatures(records, {r.record_id: r for r in records})
    return report


def export_trail(trail: AuditTrail, out: Path, fmt: str = "csv") -> dict:
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown export format {fmt!r}: csv or parquet")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out / MANIFEST} exists: export into a new folder")
    # The seals first: one anchored after the records were read would name a record not exported.
    statements, _ = trail.anchor.read() if trail.anchor is not None else ([], [])
    anchors = trail.anchors()
    records = [r for recs, _ in trail.store.read().values() for r in recs]
    name = f"audit_records.{fmt}"
    _write(records, out / name, fmt)
    (out / SEALS).write_bytes(b"".join(s.to_json() + b"\n" for s in statements))
    key = trail.verify_key
    report = _check(records, anchors, key, _seqs(statements))
    manifest = {
        "exported_utc": format_time(utcnow()),
        "format": fmt,
        "hash": "sha256 over the canonical JSON of each record incl. prev_hash (docs/audit.md)",
        "files": [{"name": name, "sha256": sha256_file(out / name), "records": len(records)}],
        "seals": {"name": SEALS, "sha256": sha256_file(out / SEALS), "statements": len(statements)},
        "trail_key": None if key is None else {"key_id": key.key_id, "public_key": key.public_hex},
        "chains": {
            c.chain: {"records": c.records, "head_seq": c.head_seq, "head_hash": c.head_hash, "seals": c.seals}
            for c in report.chains
        },
        "verification_at_export": report.as_dict(),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True)
    (out / MANIFEST).write_text(text, encoding="utf-8")
    (out / f"{MANIFEST}.sha256").write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST}\n")
    return manifest


@dataclass
class ExportCheck:
    problems: list[str] = field(default_factory=list)
    report: VerifyReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.report is not None and self.report.ok

    def to_text(self) -> str:
        head = f"export: {'OK' if self.ok else 'FAILED'}"
        lines = [head] + [f"  {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        if self.report is not None:
            lines.append(self.report.to_text())
        return "\n".join(lines)


def _seqs(statements: list[SealStatement]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for s in statements:
        out.setdefault(s.chain, set()).add(s.head_seq)
    return out


def _export_key(manifest: dict, public_key: str | None, check: ExportCheck) -> TrailKey | None:
    """The key to check signatures with: the one the auditor gives, else the manifest's."""
    listed = manifest.get("trail_key") or {}
    if public_key:
        key = TrailKey.from_public_hex(public_key)
        if listed and listed.get("key_id") != key.key_id:
            check.problems.append(f"the export names trail key {listed.get('key_id')}, the given public key is "
                                  f"{key.key_id}: signed by another key")
        check.notes.append(f"signatures checked with the given public key (key id {key.key_id})")
        return key
    if listed.get("public_key"):
        key = TrailKey.from_public_hex(str(listed["public_key"]))
        check.notes.append(f"signatures checked with the public key in the export (key id {key.key_id}); compare it "
                           f"with the key pinned at the site, or give it with --public-key")
        return key
    check.notes.append("trail signatures NOT checked: the export holds no public key; give it with --public-key")
    return None


def _export_seals(folder: Path, manifest: dict, key: TrailKey | None, check: ExportCheck) -> list[SealStatement]:
    spec = manifest.get("seals")
    if not spec:
        return []
    path = folder / spec["name"]
    if not path.is_file():
        check.problems.append(f"{spec['name']}: missing")
        return []
    digest = sha256_file(path)
    if digest != spec["sha256"]:
        check.problems.append(f"{spec['name']}: sha256 {digest}, manifest says {spec['sha256']}")
    statements: list[SealStatement] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            statements.append(SealStatement.from_json(line))
        except (ValueError, KeyError, TypeError) as exc:
            check.problems.append(f"{spec['name']}:{n}: not a seal statement ({exc})")
    if len(statements) != spec.get("statements", len(statements)):
        check.problems.append(f"{spec['name']}: {len(statements)} statements, manifest says {spec['statements']}")
    if key is not None:
        for s in statements:
            if not s.valid(key):
                check.problems.append(f"seal statement of {s.chain}#{s.head_seq} at {s.time} does not verify with "
                                      f"the trail key {key.key_id}: forged or altered")
    return statements


def verify_export(folder: Path, public_key: str | None = None) -> ExportCheck:
    """``public_key`` (hex): check the trail signatures and seals with it (else with the key the
    manifest lists; an export without one is checked by hashes and links only, and says so)."""
    folder = Path(folder)
    check = ExportCheck()
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8")
        manifest = json.loads(text)
    except (OSError, ValueError) as exc:
        check.problems.append(f"cannot read {folder / MANIFEST}: {exc}")
        return check
    side = folder / f"{MANIFEST}.sha256"
    if side.is_file() and side.read_text().split()[0] != hashlib.sha256(text.encode()).hexdigest():
        check.problems.append(f"{MANIFEST} does not match {side.name}: the manifest was changed")
    records: list[AuditRecord] = []
    for f in manifest.get("files", []):
        path = folder / f["name"]
        if not path.is_file():
            check.problems.append(f"{f['name']}: missing")
            continue
        digest = sha256_file(path)
        if digest != f["sha256"]:
            check.problems.append(f"{f['name']}: sha256 {digest}, manifest says {f['sha256']}")
        rows = _read(path)
        if len(rows) != f["records"]:
            check.problems.append(f"{f['name']}: {len(rows)} records, manifest says {f['records']}")
        records += rows
    key = _export_key(manifest, public_key, check)
    statements = _export_seals(folder, manifest, key, check)
    anchors: dict[str, dict[int, str]] = {}
    for s in statements:
        if key is not None and s.valid(key):
            known = anchors.setdefault(s.chain, {}).setdefault(s.head_seq, s.head_hash)
            if known != s.head_hash:
                check.problems.append(f"two signed seals name different hashes for {s.chain}#{s.head_seq}")
    check.report = _check(records, anchors, key, _seqs(statements))
    for c in check.report.chains:
        if c.broken is not None:
            check.problems.append(f"first broken link: {c.broken.record_id} ({c.broken.kind})")
    found = {c.chain: c for c in check.report.chains}
    for chain, want in sorted(manifest.get("chains", {}).items()):
        got = found.get(chain)
        if got is None:
            check.problems.append(f"chain {chain}: missing from the export")
        elif (got.records, got.head_seq, got.head_hash) != (want["records"], want["head_seq"], want["head_hash"]):
            check.problems.append(
                f"chain {chain}: ends at seq {got.head_seq} hash {got.head_hash} with {got.records} records, "
                f"manifest says seq {want['head_seq']} hash {want['head_hash']} with {want['records']}"
            )
    for chain in sorted(set(found) - set(manifest.get("chains", {}))):
        check.problems.append(f"chain {chain}: not in the manifest")
    return check
