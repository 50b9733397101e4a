"""Checking a trail: its chains against their hashes, links and signatures, and against the anchored
seals of the anchor file and of the seal topic (docs/audit.md, "Verification").

Apart from the trail that appends (`pipeline.audit.trail`) because checking needs none of its
powers: only the records, the anchors and the public key. `AuditTrail.verify` builds one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.audit.record import ADOPT_ACTION, GENESIS, SIGN_ACTION, parse_time
from pipeline.audit.seals import AnchorFile, SealStatement, TrailKey
from pipeline.audit.store import AuditStore
from pipeline.audit.verify import (
    Break,
    ChainReport,
    VerifyReport,
    adoptions_from,
    check_signatures,
    verify_chain,
)


@dataclass
class TopicSeals:
    """The statements read from the seal topic ``name`` (`pipeline.audit.sealtopic`), the messages
    that were not statements, and how old a statement may be before it must be in the anchor file."""

    name: str
    statements: list[SealStatement] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    grace_s: float = 660.0



@dataclass
class TrailCheck:
    """One verification of the chains in ``store`` against the anchors, with ``key`` (the pinned
    public key, or the trail key's; None: nothing verifies as signed)."""

    store: AuditStore
    anchor: AnchorFile | None
    key: TrailKey | None
    clock: Callable[[], datetime]

    def anchored(self, topic: TopicSeals | None = None) -> tuple[dict[str, dict[int, str]], list[Break]]:
        """The anchored seals that verify with the key (chain -> seq -> hash), and a break for each
        one that does not (forged, altered, another key) or contradicts another. With ``topic``, the
        statements read from the seal topic count as anchored too."""
        statements, damaged = self.anchor.read() if self.anchor is not None else ([], [])
        if topic is not None:
            statements = statements + topic.statements
            damaged = damaged + topic.damaged
        return self.check_statements(statements, damaged, self.key)

    @staticmethod
    def check_statements(
        statements: Sequence[SealStatement], damaged: Sequence[str], key: TrailKey | None,
    ) -> tuple[dict[str, dict[int, str]], list[Break]]:
        good: dict[str, dict[int, str]] = {}
        bad = [Break("", "", "anchor", "a seal statement", "unreadable", msg) for msg in damaged]
        for s in statements:
            rid = f"{s.chain}#{s.head_seq}"
            if key is None or not s.valid(key):
                bad.append(Break(s.chain, rid, "anchor", f"signed by key {key.key_id if key else '-'}",
                                 f"key {s.key_id}", f"anchored seal of {rid} at {s.time} does not verify with "
                                 f"the trail key {key.key_id if key else '(none)'}: forged or altered"))
                continue
            known = good.setdefault(s.chain, {}).setdefault(s.head_seq, s.head_hash)
            if known != s.head_hash:
                bad.append(Break(s.chain, rid, "anchor", known, s.head_hash,
                                 f"two signed seals name different hashes for {rid}: the chain was rewritten "
                                 f"between them"))
        return good, bad

    def statement_seqs(self, topic: TopicSeals | None) -> dict[str, set[int]]:
        """chain -> every seq an anchored statement names, valid or not."""
        statements, _ = self.anchor.read() if self.anchor is not None else ([], [])
        out: dict[str, set[int]] = {}
        for s in [*statements, *(topic.statements if topic is not None else [])]:
            out.setdefault(s.chain, set()).add(s.head_seq)
        return out

    def compare_anchor_copies(self, topic: TopicSeals) -> tuple[list[str], list[str]]:
        """The anchor file against the seal topic: (mismatches, notes). A signed statement on the topic
        but not in the file is a mismatch (lines dropped from the file) once it is older than
        ``topic.grace_s`` (the sealer copies the topic into its file every interval); one in the file
        but not on the topic is a note (published while the broker was down, or a memory-only broker
        restarted). Statements that do not verify are reported as anchor breaks, not here."""
        key = self.key
        if self.anchor is None:  # a submitting service's container: the anchor file is the audit service's
            return [], [f"no anchor file on this host (the audit service's volume holds it): the chains were "
                        f"checked against the {len(topic.statements)} statement(s) of the topic {topic.name}, "
                        f"the two copies were not compared (run verify in the audit service to compare them)"]
        in_file, _ = self.anchor.read()
        where = str(self.anchor.path)
        file_ids = {s.to_json() for s in in_file}
        topic_ids = {s.to_json() for s in topic.statements}
        now = self.clock()
        mismatches: list[str] = []
        notes: list[str] = []
        pending = 0
        for s in topic.statements:
            if s.to_json() in file_ids or key is None or not s.valid(key):
                continue
            try:
                age = (now - parse_time(s.time)).total_seconds()
            except ValueError:
                age = float("inf")
            if age < topic.grace_s:
                pending += 1
                continue
            mismatches.append(f"signed seal of {s.chain}#{s.head_seq} ({s.head_hash[:16]}, {s.time}) is on the topic "
                              f"{topic.name} but not in the anchor file {where}: lines dropped from the anchor file")
            file_ids.add(s.to_json())  # once per statement
        if pending:
            notes.append(f"{pending} signed seal(s) on the topic {topic.name} newer than {topic.grace_s:g} s are "
                         f"not in the anchor file yet (the sealer copies them every interval)")
        missing = [s for s in in_file if s.to_json() not in topic_ids and key is not None and s.valid(key)]
        if missing:
            first = ", ".join(f"{s.chain}#{s.head_seq} at {s.time}" for s in missing[:3])
            notes.append(f"{len(missing)} signed seal(s) in the anchor file are not on the topic {topic.name} "
                         f"(e.g. {first}): published while the broker was down, or the broker lost them "
                         f"(the embedded broker keeps topics in memory only)")
        return mismatches, notes

    def verify(
        self, chain: str | None = None, time_from: datetime | None = None, time_to: datetime | None = None,
        topic: TopicSeals | None = None,
    ) -> VerifyReport:
        """Check every chain (or ``chain``), in full or over a time range, and every signature;
        with ``topic``, against the seal topic's statements too (and compare the two anchor copies)."""
        key = self.key
        anchors, bad = self.anchored(topic)
        named = self.statement_seqs(topic)
        adoptions = adoptions_from(self.store.by_action(ADOPT_ACTION))
        ranged = time_from is not None or time_to is not None
        report = VerifyReport()
        spans = self.store.read(chain, time_from, time_to)
        for c in sorted(set(spans) | ({chain} if chain and not ranged else set())):
            records, before = spans.get(c, ([], None))
            start_seq = records[0].seq if records and before is not None else 0
            start_prev = before.record_hash if before is not None else GENESIS
            mine = anchors.get(c, {})
            if ranged:  # seals after the span are not this check's business
                last = max((r.seq for r in records), default=-1)
                mine = {s: h for s, h in mine.items() if s <= last}
            report.chains.append(verify_chain(c, records, start_seq=start_seq, start_prev=start_prev,
                                              anchors=mine, key=key, to_head=not ranged,
                                              adoption=adoptions.get(c), statement_seqs=named.get(c, ())))
        if not ranged:  # anchored chains that vanished entirely
            for c in sorted(set(anchors) - set(spans)):
                if chain is None or c == chain:
                    report.chains.append(verify_chain(c, [], anchors=anchors[c], key=key))
        if self.anchor is not None:
            report.anchor_sources.append(f"anchor file {self.anchor.path}")
        if topic is not None:
            report.anchor_sources.append(f"topic {topic.name}: {len(topic.statements)} statement(s)")
            report.anchor_findings, report.anchor_notes = self.compare_anchor_copies(topic)
            if chain is not None:
                tag = f"{chain}#"
                report.anchor_findings = [f for f in report.anchor_findings if tag in f]
        for brk in bad:
            if chain is not None and brk.chain != chain:
                continue
            target = next((r for r in report.chains if r.chain == brk.chain), None)
            if target is None:
                target = ChainReport(brk.chain or "(anchor)")
                report.chains.append(target)
            if target.broken is None:
                target.broken = brk
        signatures = self.store.by_action(SIGN_ACTION)
        targets = self.store.by_ids([s.subject for s in signatures])
        checks = check_signatures(signatures, targets)
        report.signatures = [s for s in checks if chain is None or s.signed_record.rpartition("#")[0] == chain]
        return report
