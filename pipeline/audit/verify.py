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

Legacy trails: records written before the trail key existed carry no ``trail_sig``. A chain's
prefix up to its last unsigned seal record before its first signature (the whole chain when it
has none), with no signed seal naming it, is reported as a distinct finding (kind ``legacy``: "N
records before signing began") until `linesight audit adopt-legacy` records, in the ``system``
chain, who vouched for that prefix (an ``audit.adopt_legacy`` record) and anchors a signed seal of
its head; then the chain passes and the report says where and by whom it was adopted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.audit.record import ADOPT_ACTION, GENESIS, SEAL_ACTION, SIGN_ACTION, AuditRecord
from pipeline.audit.seals import TrailKey


@dataclass(frozen=True)
class Break:
    """The first broken link of a chain."""

    chain: str
    record_id: str
    kind: str  # changed | deleted | inserted | link | seal | signature | unsigned | anchor | legacy
    expected: str
    found: str
    message: str


@dataclass(frozen=True)
class Adoption:
    """An ``audit.adopt_legacy`` record: ``user`` vouched for the unsigned prefix
    ``chain#0..head_seq`` (``count`` records ending in ``head_hash``) at ``record_id``."""

    chain: str
    head_seq: int
    head_hash: str
    count: int
    record_id: str
    user: str
    role: str
    time: str
    reason: str

    def describe(self) -> str:
        return f"adopted at {self.record_id} by {self.user} ({self.role}) at {self.time}: {self.reason}"


def adoptions_from(records: Iterable[AuditRecord]) -> dict[str, Adoption]:
    """The newest adoption per adopted chain among ``records`` (any chains; others are ignored)."""
    out: dict[str, Adoption] = {}
    for r in records:
        if r.action != ADOPT_ACTION:
            continue
        d = r.detail_dict()
        try:
            a = Adoption(str(d["chain"]), int(d["prefix_head_seq"]), str(d["prefix_head_hash"]),
                         int(d["unsigned_records"]), r.record_id, r.user, r.role,
                         r.time.strftime("%Y-%m-%dT%H:%M:%SZ"), r.reason)
        except (KeyError, TypeError, ValueError):
            continue
        if a.chain not in out or a.head_seq > out[a.chain].head_seq:
            out[a.chain] = a
    return out


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
    # Records before signing began (legacy, unsigned, sealed only by hash): seq 0..legacy_records-1.
    legacy_records: int = 0
    adopted: Adoption | None = None

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
    # Where the anchored seals came from ("anchor file PATH: N statement(s)", "topic T: N ...").
    anchor_sources: list[str] = field(default_factory=list)
    # The two anchor copies disagree: fatal ones fail the report, the others are reported only.
    anchor_findings: list[str] = field(default_factory=list)
    anchor_notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains) and all(s.valid for s in self.signatures) \
            and not self.anchor_findings

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
            if c.adopted is not None:
                out.append(f"    {c.legacy_records} record(s) before signing began (unsigned, sealed only by hash), "
                           f"{c.adopted.describe()}")
            if c.broken:
                out.append(f"    first broken link: {c.broken.message}")
        if self.anchor_sources:
            out.append("anchors: " + "; ".join(self.anchor_sources))
        for f in self.anchor_findings:
            out.append(f"  ANCHOR MISMATCH: {f}")
        for n in self.anchor_notes:
            out.append(f"  note: {n}")
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
                 "legacy_records": c.legacy_records,
                 "adopted": None if c.adopted is None else c.adopted.__dict__,
                 "broken": None if c.broken is None else c.broken.__dict__}
                for c in self.chains
            ],
            "signatures": [s.__dict__ for s in self.signatures],
            "anchors": {"sources": self.anchor_sources, "mismatches": self.anchor_findings,
                        "notes": self.anchor_notes},
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
    adoption: Adoption | None = None,
    statement_seqs: Iterable[int] = (),
) -> ChainReport:
    """Check ``records`` of one chain (any order); ``start_*``: where a partial range begins.
    ``anchors``: seq -> hash of the verified, anchored seals; ``key``: check ``trail_sig``s, and with
    ``to_head`` (the records run to the chain's head) that the head is covered by one or by an anchor.
    ``adoption``: the chain's legacy adoption; ``statement_seqs``: the seqs every anchored statement of
    this chain names, valid or not (a statement over an unsigned prefix means signing existed then)."""
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
    if key is not None and to_head and start_seq == 0 and report.head_seq is not None:
        legacy_to = _legacy_prefix(ordered, adoption, set(statement_seqs))
        if legacy_to is not None:
            report.legacy_records = legacy_to + 1
            if adoption is not None and adoption.head_seq >= legacy_to and seen.get(adoption.head_seq) == adoption.head_hash:
                report.adopted = adoption
                covered = max(covered, adoption.head_seq)
            else:
                wrong = "" if adoption is None else (
                    f" (the adoption {adoption.record_id} names {chain}#{adoption.head_seq} with hash "
                    f"{adoption.head_hash[:16]}, which does not match)")
                report.broken = Break(
                    chain, f"{chain}#0", "legacy", f"signed by key {key.key_id}", "written before signing began",
                    f"{legacy_to + 1} record(s) before signing began (unsigned, sealed only by hash): {chain}#0.."
                    f"{legacy_to} carry no trail signature and no signed seal names them{wrong}: written before the "
                    f"trail key existed (or their signatures were removed); review them and adopt them with "
                    f"`linesight audit adopt-legacy --user U --reason R` (docs/audit.md)",
                )
                return report
    if key is not None and to_head and report.head_seq is not None and covered < report.head_seq:
        first = covered + 1
        report.broken = Break(
            chain, f"{chain}#{first}", "unsigned", f"signed by key {key.key_id}", "no trail signature",
            f"record(s) {chain}#{first}..{report.head_seq} carry no trail signature of key {key.key_id} and no "
            f"signed seal covers them: appended outside LineSight (forged), or their signature was removed",
        )
    return report


def _legacy_prefix(ordered: list[AuditRecord], adoption: Adoption | None, statement_seqs: set[int]) -> int | None:
    """The last seq of the chain's legacy (pre-signing) prefix, or None.

    Before the first ``trail_sig``: up to the last unsigned seal record (seal records are always
    signed once a key exists), or the adopted prefix; the whole chain when nothing is signed. Not
    legacy when an anchored statement (other than the adoption's) names a record of that prefix:
    anchors exist only since signing, so the signatures were removed."""
    first_signed = next((r.seq for r in ordered if r.trail_sig), None)
    if first_signed is None:
        legacy_to: int | None = ordered[-1].seq
    else:
        legacy_to = max((r.seq for r in ordered if r.action == SEAL_ACTION and not r.trail_sig
                         and r.seq < first_signed), default=None)
        if adoption is not None and adoption.head_seq < first_signed:
            legacy_to = max(legacy_to if legacy_to is not None else -1, adoption.head_seq)
    if legacy_to is None:
        return None
    adopted_seq = adoption.head_seq if adoption is not None else None
    if any(s <= legacy_to and s != adopted_seq for s in statement_seqs):
        return None
    return legacy_to


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
