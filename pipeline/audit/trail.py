"""The audit trail: append events to a chain, seal chains, publish and anchor the seals.

One writer per chain (docs/audit.md): decision chains ``decisions/<line>/p<partition>`` are
written only by the sink that owns that results partition, in offset order; the ``system``
chain (every change and action) by short CLI actions that take an exclusive file lock under
``state_dir/audit/<database>`` while they append. A seal (action ``audit.seal``) is appended after every
``seal_every`` records of a chain, or when ``seal_interval_s`` passed since its last seal; it
names the chain head's hash, and a copy of it goes to ``state_dir/audit/<database>/seals.jsonl`` (and the
audit topic) as an anchor that `linesight audit verify` checks the table against.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from pipeline.audit.publish import AuditPublisher
from pipeline.audit.record import (
    GENESIS,
    SEAL_ACTION,
    SIGN_ACTION,
    SYSTEM_CHAIN,
    AuditEvent,
    AuditRecord,
    make_record,
    utcnow,
)
from pipeline.audit.store import AuditStore, Head
from pipeline.audit.verify import VerifyReport, check_signatures, verify_chain
from pipeline.clickhouse import ClickHouseClient
from pipeline.settings import Settings


class AuditTrail:
    def __init__(
        self,
        client: ClickHouseClient,
        database: str,
        *,
        state_dir: Path | None = None,
        publisher: AuditPublisher | None = None,
        seal_every: int = 1000,
        seal_interval_s: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = AuditStore(client, database)
        self.dir = Path(state_dir) / "audit" / database if state_dir is not None else None
        self.publisher = publisher
        self.seal_every = max(1, seal_every)
        self.seal_interval_s = seal_interval_s
        self.clock = clock

    @classmethod
    def from_settings(
        cls, settings: Settings, client: ClickHouseClient, publisher: AuditPublisher | None = None
    ) -> AuditTrail:
        return cls(
            client, settings.clickhouse.database, state_dir=settings.state_dir, publisher=publisher,
            seal_every=settings.audit.seal_every, seal_interval_s=settings.audit.seal_interval_s,
        )

    @property
    def anchor_path(self) -> Path | None:
        return self.dir / "seals.jsonl" if self.dir is not None else None

    @contextlib.contextmanager
    def _locked(self, chain: str) -> Iterator[None]:
        if self.dir is None:
            yield
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in chain)
        with open(self.dir / f"{safe}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def record(self, event: AuditEvent, chain: str = SYSTEM_CHAIN) -> AuditRecord:
        """Append one event (a change or action) and return its record."""
        return self.append(chain, [event])[0]

    def append(self, chain: str, events: Sequence[AuditEvent]) -> list[AuditRecord]:
        """Append ``events`` in order to ``chain`` (and seal it when due); returns the event records."""
        return self.append_many({chain: list(events)})[chain]

    def append_many(self, events_by_chain: dict[str, list[AuditEvent]]) -> dict[str, list[AuditRecord]]:
        """One insert for several chains (the sink: one chain per line and partition)."""
        chains = sorted(c for c, ev in events_by_chain.items() if ev)
        out: dict[str, list[AuditRecord]] = {c: [] for c in events_by_chain}
        if not chains:
            return out
        with contextlib.ExitStack() as stack:
            for c in chains:
                stack.enter_context(self._locked(c))
            heads = self.store.heads(chains)
            new: list[AuditRecord] = []
            seals: list[AuditRecord] = []
            now = self.clock()
            for c in chains:
                head = heads.get(c) or Head(c, 0, GENESIS, 0, None, None)
                seq, prev, unsealed = head.next_seq, head.hash, head.unsealed
                for ev in events_by_chain[c]:
                    rec = make_record(c, seq, prev, ev, now)
                    out[c].append(rec)
                    new.append(rec)
                    seq, prev, unsealed = seq + 1, rec.record_hash, unsealed + 1
                since = head.last_seal_time or head.first_time or now
                if unsealed >= self.seal_every or (now - since).total_seconds() >= self.seal_interval_s:
                    seals.append(self._seal_record(c, seq, prev, unsealed, now))
            self.store.insert(new + seals)
            self._anchor(seals)
        self._publish(new + seals)
        return out

    def seal(self, chains: Sequence[str] | None = None) -> list[AuditRecord]:
        """Seal every chain (or ``chains``) that has records after its last seal."""
        names = list(chains) if chains is not None else self.store.chains()
        seals: list[AuditRecord] = []
        with contextlib.ExitStack() as stack:
            for c in sorted(names):
                stack.enter_context(self._locked(c))
            now = self.clock()
            for head in self.store.heads(sorted(names)).values():
                if head.unsealed > 0:
                    seals.append(self._seal_record(head.chain, head.next_seq, head.hash, head.unsealed, now))
            self.store.insert(seals)
            self._anchor(seals)
        self._publish(seals)
        return seals

    def _seal_record(self, chain: str, seq: int, head_hash: str, count: int, now: datetime) -> AuditRecord:
        event = AuditEvent(
            SEAL_ACTION, subject=chain, new_value=head_hash, reason=f"seal after {count} record(s)",
            detail={"records_since_last_seal": count, "head_seq": seq - 1},
        )
        return make_record(chain, seq, head_hash, event, now)

    def _anchor(self, seals: Sequence[AuditRecord]) -> None:
        path = self.anchor_path
        if path is None or not seals:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for s in seals:
                f.write(json.dumps({"chain": s.chain, "seq": s.seq, "hash": s.record_hash}) + "\n")

    def anchors(self) -> dict[str, dict[int, str]]:
        path = self.anchor_path
        out: dict[str, dict[int, str]] = {}
        if path is None or not path.is_file():
            return out
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                doc = json.loads(line)
                out.setdefault(doc["chain"], {})[int(doc["seq"])] = doc["hash"]
        return out

    def _publish(self, records: Sequence[AuditRecord]) -> None:
        if self.publisher is not None and records:
            self.publisher.publish(records)
            self.publisher.flush()

    def verify(
        self, chain: str | None = None, time_from: datetime | None = None, time_to: datetime | None = None
    ) -> VerifyReport:
        """Check every chain (or ``chain``), in full or over a time range, and every signature."""
        anchors = self.anchors()
        report = VerifyReport()
        spans = self.store.read(chain, time_from, time_to)
        for c in sorted(set(spans) | ({chain} if chain and not time_from and not time_to else set())):
            records, before = spans.get(c, ([], None))
            start_seq = records[0].seq if records and before is not None else 0
            start_prev = before.record_hash if before is not None else GENESIS
            report.chains.append(
                verify_chain(c, records, start_seq=start_seq, start_prev=start_prev, anchors=anchors.get(c))
            )
        if not time_from and not time_to:  # anchored chains that vanished entirely
            for c in sorted(set(anchors) - set(spans)):
                if chain is None or c == chain:
                    report.chains.append(verify_chain(c, [], anchors=anchors[c]))
        signatures = self.store.by_action(SIGN_ACTION)
        targets = self.store.by_ids([s.subject for s in signatures])
        checks = check_signatures(signatures, targets)
        report.signatures = [s for s in checks if chain is None or s.signed_record.rpartition("#")[0] == chain]
        return report
