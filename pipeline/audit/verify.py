"""Chain verification, with no database: the same code checks ClickHouse and an offline export.

Per chain, records are taken in ``seq`` order (ties by hash, so a duplicated place shows) and
each must (1) hash to its stored ``record_hash`` (else it was changed), (2) sit at the next
``seq`` (a gap: records deleted; a repeat: a record inserted) and (3) carry its predecessor's
hash as ``prev_hash`` (else something was deleted, inserted or moved before it). A seal must
name the hash of the record it follows. With the trail's public key, (4) every ``trail_sig``
must verify and the chain's head must be covered by one (or by an anchored seal): records added
or rehashed by SQL carry none that verifies. Anchored seals (signed statements kept outside the
database and the state folder) must still be in the chain with the same hash, which catches a
truncated tail. The first failure per chain is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.audit.record import GENESIS, SEAL_ACTION, SIGN_ACTION, AuditRecord
from pipeline.audit.seals import TrailKey


@dataclass(frozen=True)
class Break:
    """The first broken link of a chain."""

    chain: str
    record_id: str
    kind: str  # changed | deleted | inserted | link | seal | signature | unsigned | anchor
    expected: str
    found: str
    message: str


@dataclass
class ChainReport:
    chain: str
    records: int = 0
    first_seq: int | None = None
    head_seq: int | None = None
    head_hash: str = ""
    seals: int = 0
    # Newest record covered by an anchored signed seal: later records are in the window a
    # truncation cannot be seen in (until the next seal).
    sealed_seq: int | None = None
    broken: Break | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None


@dataclass(frozen=True)
class SignatureCheck:
    signature_id: str
    signer: str
    role: str
    meaning: str
    signed_record: str
    signed_hash: str
    valid: bool
    why: str


@dataclass
class VerifyReport:
    chains: list[ChainReport] = field(default_factory=list)
    signatures: list[SignatureCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains) and all(s.valid for s in self.signatures)

    @property
    def first_break(self) -> Break | None:
        return next((c.broken for c in self.chains if c.broken), None)

    def to_text(self) -> str:
        out = [f"audit trail: {'OK' if self.ok else 'BROKEN'} ({len(self.chains)} chain(s), "
               f"{sum(c.records for c in self.chains)} record(s))"]
        for c in self.chains:
            span = f"seq {c.first_seq}..{c.head_seq}" if c.records else "empty"
            state = "ok" if c.ok else "BROKEN"
            window = "" if c.sealed_seq is None or c.head_seq is None else \
                f", signed seal at seq {c.sealed_seq} ({c.head_seq - c.sealed_seq} newer)"
            out.append(f"  {c.chain:<28} {state:<6} {c.records:>7} records ({span}), {c.seals} seal(s), "
                       f"head {c.head_hash[:16] or '-'}{window}")
            if c.broken:
                out.append(f"    first broken link: {c.broken.message}")
        if self.signatures:
            out.append("signatures:")
            for s in self.signatures:
                out.append(f"  {s.signature_id:<16} {s.meaning:<9} by {s.signer} ({s.role}) on {s.signed_record} "
                           f"[{s.signed_hash[:16]}]: {'valid' if s.valid else 'INVALID: ' + s.why}")
        return "\n".join(out)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "chains": [
                {"chain": c.chain, "ok": c.ok, "records": c.records, "first_seq": c.first_seq, "head_seq": c.head_seq,
                 "head_hash": c.head_hash, "seals": c.seals, "sealed_seq": c.sealed_seq,
                 "broken": None if c.broken is None else c.broken.__dict__}
                for c in self.chains
            ],
            "signatures": [s.__dict__ for s in self.signatures],
        }


def verify_chain(
    chain: str,
    records: Iterable[AuditRecord],
    *,
    start_seq: int = 0,
    start_prev: str = GENESIS,
    anchors: dict[int, str] | None = None,
    key: TrailKey | None = None,
    to_head: bool = False,
) -> ChainReport:
    """Check ``records`` of one chain (any order); ``start_*``: where a partial range begins.
    ``anchors``: seq -> hash of the verified, anchored seals; ``key``: check ``trail_sig``s, and with
    ``to_head`` (the records run to the chain's head) that the head is covered by one or by an anchor."""
    ordered = sorted(records, key=lambda r: (r.seq, r.record_hash))
    report = ChainReport(chain)
    expected_seq, expected_prev = start_seq, start_prev
    seen: dict[int, str] = {}
    signed_to = start_seq - 1  # newest record covered by a valid trail signature

    def fail(r: AuditRecord, kind: str, expected: str, found: str, message: str) -> ChainReport:
        report.broken = Break(chain, r.record_id, kind, expected, found, message)
        return report

    report.records = len(ordered)
    report.first_seq = ordered[0].seq if ordered else None
    for r in ordered:
        actual = r.compute_hash()
        if actual != r.record_hash:
            return fail(r, "changed", r.record_hash, actual,
                        f"record {r.record_id} was changed: expected hash {r.record_hash}, its content hashes to {actual}")
        if r.seq < expected_seq:
            return fail(r, "inserted", f"seq {expected_seq}", f"seq {r.seq}",
                        f"record {r.record_id} was inserted: seq {r.seq} is already taken "
                        f"(expected seq {expected_seq} after {r.chain}#{expected_seq - 1})")
        if r.seq > expected_seq:
            return fail(r, "deleted", f"seq {expected_seq}", f"seq {r.seq}",
                        f"record(s) {chain}#{expected_seq}..{r.seq - 1} deleted before {r.record_id}: "
                        f"expected previous hash {expected_prev}, found {r.prev_hash}")
        if r.prev_hash != expected_prev:
            return fail(r, "link", expected_prev, r.prev_hash,
                        f"record {r.record_id} does not follow its predecessor (moved, inserted or predecessor "
                        f"replaced): expected previous hash {expected_prev}, found {r.prev_hash}")
        if r.action == SEAL_ACTION:
            report.seals += 1
            if r.new_value != r.prev_hash:
                return fail(r, "seal", r.prev_hash, r.new_value,
                            f"seal {r.record_id} names head {r.new_value}, expected {r.prev_hash}")
        if key is not None and r.trail_sig:
            if not key.verify_record(r.record_hash, r.trail_sig):
                return fail(r, "signature", f"signed by key {key.key_id}", "a signature that does not verify",
                            f"record {r.record_id}: its trail signature does not verify with key {key.key_id}: "
                            f"it or a record before it was rewritten after it was signed")
            signed_to = r.seq
        seen[r.seq] = r.record_hash
        expected_seq, expected_prev = r.seq + 1, r.record_hash
        report.head_seq, report.head_hash = r.seq, r.record_hash
    for seq, anchored in sorted((anchors or {}).items()):
        if seq < start_seq:
            continue
        found = seen.get(seq)
        if found != anchored:
            rid = f"{chain}#{seq}"
            report.broken = Break(
                chain, rid, "anchor", anchored, found or "(missing)",
                f"signed seal names {rid} with hash {anchored}, but the record is "
                + (f"gone: the chain ends at seq {report.head_seq} (tail truncated)" if found is None
                   else f"now {found} (chain rewritten)"),
            )
            return report
        report.sealed_seq = seq
    covered = max(signed_to, report.sealed_seq if report.sealed_seq is not None else -1)
    if key is not None and to_head and report.head_seq is not None and covered < report.head_seq:
        first = covered + 1
        report.broken = Break(
            chain, f"{chain}#{first}", "unsigned", f"signed by key {key.key_id}", "no trail signature",
            f"record(s) {chain}#{first}..{report.head_seq} carry no trail signature of key {key.key_id} and no "
            f"signed seal covers them: appended outside LineSight (forged), or their signature was removed",
        )
    return report


def check_signatures(records: Iterable[AuditRecord], by_id: dict[str, AuditRecord]) -> list[SignatureCheck]:
    """Each signature record against the record it signs (looked up in ``by_id``)."""
    checks: list[SignatureCheck] = []
    for s in records:
        if s.action != SIGN_ACTION:
            continue
        d = s.detail_dict()
        signed_hash = str(d.get("signed_hash", ""))
        target = by_id.get(s.subject)
        if target is None:
            valid, why = False, f"signed record {s.subject} not found"
        elif target.compute_hash() != signed_hash:
            valid, why = False, f"record {s.subject} changed since it was signed (signed {signed_hash[:16]}, " \
                                f"now hashes to {target.compute_hash()[:16]})"
        elif target.record_hash != signed_hash:
            valid, why = False, f"record {s.subject} stored hash differs from the signed hash"
        else:
            valid, why = True, ""
        checks.append(SignatureCheck(s.record_id, s.user, s.role, s.new_value, s.subject, signed_hash, valid, why))
    return checks
