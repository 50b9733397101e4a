"""The audit trail: append events to a chain, sign each append, seal chains, anchor the seals.

One writer (docs/audit.md, "One writer"): a trail in ``direct`` mode appends itself, under an
exclusive file lock per chain (``state_dir/audit/<database>``): the audit service
(`pipeline.audit.appender`), or a process alone with its chDB folder and no broker. A trail in
``topic`` mode (every other service) submits its events to the audit-events topic
(`pipeline.audit.intake`) and waits for the audit service to append them; it holds no key.
Decision chains ``decisions/<line>/p<partition>`` take the events of the sink that owns that
results partition, in offset order. Each append signs its last record with the trail key
(`pipeline.audit.seals`). A seal record (action ``audit.seal``) is appended after every
``seal_every`` records of a chain, or when ``seal_interval_s`` passed since its last seal; every
seal, and every heartbeat (`heartbeat`: a signed statement naming the head, appended to no chain),
goes to the anchors outside the state folder that `linesight audit verify` checks the table against.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from pipeline.audit.check import TopicSeals, TrailCheck
from pipeline.audit.intake import EventSubmitter
from pipeline.audit.publish import AuditPublisher
from pipeline.audit.record import (
    ADOPT_ACTION,
    GENESIS,
    SEAL_ACTION,
    SYSTEM_CHAIN,
    AuditEvent,
    AuditRecord,
    format_time,
    make_record,
    utcnow,
)
from pipeline.audit.seals import AnchorFile, SealStatement, TrailKey, default_audit_dir, ensure_outside
from pipeline.audit.store import AuditStore, Head
from pipeline.audit.verify import (
    Break,
    VerifyReport,
)
from pipeline.clickhouse import ClickHouseClient
from pipeline.settings import Settings

log = logging.getLogger(__name__)


class AuditNotAppended(RuntimeError):
    """Submitted events were acknowledged by the broker (durable) but not appended in time: the
    audit service is down or behind. The action that needed the record must not go on."""


class AuditTrail:
    """Appends (or submits), seals and verifies the chains of one database.

    The trail key (``key_file``, default ``<state_dir>.audit/seal.key``, created 0600 on first use)
    and the anchor folder (default ``<state_dir>.audit/anchors``) must lie outside the state folder.
    ``public_key`` (hex) pins the key verification trusts; unset, it is the key file's own.
    """

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
        key_file: Path | None = None,
        public_key: str | None = None,
        anchor_dir: Path | None = None,
        submitter: EventSubmitter | None = None,
        append_timeout_s: float = 15.0,
    ) -> None:
        self.store = AuditStore(client, database)
        self.submitter = submitter  # topic mode: the audit service appends, this process never signs
        self.append_timeout_s = append_timeout_s
        self.dir = Path(state_dir) / "audit" / database if state_dir is not None else None
        self.publisher = publisher
        self.seal_every = max(1, seal_every)
        self.seal_interval_s = seal_interval_s
        self.clock = clock
        outside = default_audit_dir(state_dir) if state_dir is not None and submitter is None else None
        default_key = outside / "seal.key" if outside is not None else None
        self.key_file = (key_file or default_key) if submitter is None else None  # submitters never sign
        # A submitting process keeps no anchor file of its own (the audit service's volume holds it);
        # one named explicitly is read by `verify`.
        anchors = anchor_dir or (outside / "anchors" if outside is not None else None)
        for path, what in ((self.key_file, "key file"), (anchors, "anchor folder")):
            if path is not None:
                ensure_outside(path, state_dir, what)
        self.anchor = AnchorFile(anchors, database) if anchors is not None else None
        self.pinned = TrailKey.from_public_hex(public_key) if public_key else None
        self._key: TrailKey | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, client: ClickHouseClient, publisher: AuditPublisher | None = None,
        *, direct: bool | None = None,
    ) -> AuditTrail:
        """The trail as ``audit.append_via`` says (``direct``: override it; the audit service
        appends directly whatever its settings say)."""
        a = settings.audit
        via_topic = (a.append_via == "topic") if direct is None else not direct
        return cls(
            client, settings.clickhouse.database, state_dir=settings.state_dir,
            publisher=None if via_topic else publisher,
            seal_every=a.seal_every, seal_interval_s=a.seal_interval_s, key_file=a.seal_key_file,
            public_key=a.seal_public_key, anchor_dir=a.anchor_dir,
            submitter=EventSubmitter(settings) if via_topic else None, append_timeout_s=a.append_timeout_s,
        )

    def close(self) -> None:
        """Release the Kafka clients now (one-shot users; everything was flushed by its append)."""
        for client in (self.submitter, self.publisher):
            if client is not None:
                client.close()

    @property
    def direct(self) -> bool:
        return self.submitter is None

    def _only_direct(self, what: str) -> None:
        if self.submitter is not None:
            raise ValueError(f"{what}: this process submits audit events (audit.append_via=topic); the audit "
                             f"service appends and seals: run it where that service runs")

    @property
    def key(self) -> TrailKey | None:
        """The signing key (loaded, or created, on first use); None without a key file."""
        if self._key is None and self.key_file is not None:
            key = TrailKey.load_or_create(self.key_file)
            if self.pinned is not None and key.key_id != self.pinned.key_id:
                raise ValueError(f"the trail key {self.key_file} (id {key.key_id}) is not the pinned "
                                 f"audit.seal_public_key (id {self.pinned.key_id})")
            self._key = key
        return self._key

    @property
    def verify_key(self) -> TrailKey | None:
        """What verification trusts: the pinned public key, else the key file's."""
        return self.pinned or self.key

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
        """Append events to several chains and return their records: directly (one insert), or,
        in topic mode, once the audit service appended them (`AuditNotAppended` after
        ``append_timeout_s``)."""
        if self.submitter is None:
            return self.append_events({c: [("", ev) for ev in evs] for c, evs in events_by_chain.items()})
        wanted = {c: list(evs) for c, evs in events_by_chain.items() if evs}
        out: dict[str, list[AuditRecord]] = {c: [] for c in events_by_chain}
        if not wanted:
            return out
        ids = self.submitter.submit(wanted)
        return out | self._await_appended(ids)

    def submit_many(self, events_by_chain: dict[str, list[AuditEvent]]) -> int:
        """Hand events over without waiting for their records (the sink: its batch is committed once
        the events are durable on the topic); direct mode appends them. Returns how many."""
        wanted = {c: list(evs) for c, evs in events_by_chain.items() if evs}
        if self.submitter is None:
            return sum(len(v) for v in self.append_many(wanted).values())
        if not wanted:
            return 0
        return sum(len(v) for v in self.submitter.submit(wanted).values())

    def _await_appended(self, ids: dict[str, list[str]]) -> dict[str, list[AuditRecord]]:
        """The records of submitted events, in submission order, polled from the trail until the
        audit service appended them all."""
        assert self.submitter is not None  # topic mode only
        chains = sorted(ids)
        wanted = [i for c in chains for i in ids[c]]
        deadline = time.monotonic() + self.append_timeout_s
        pause = 0.02
        while True:
            found = self.store.appended_events(chains, wanted)
            if all(i in found for i in wanted):
                return {c: [found[i] for i in ids[c]] for c in chains}
            if time.monotonic() >= deadline:
                missing = [i for i in wanted if i not in found]
                raise AuditNotAppended(
                    f"{len(missing)} audit event(s) are on {self.submitter.topic} (kept until appended) but the audit service did "
                    f"not append them within {self.append_timeout_s:g} s (is it running?): {', '.join(missing[:3])}")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def append_events(self, events_by_chain: dict[str, list[tuple[str, AuditEvent]]]) -> dict[str, list[AuditRecord]]:
        """Direct append of (event id, event) pairs, one insert for every chain; an event id ('' for
        none) is stored with its record so a redelivered event is recognised (the audit service)."""
        self._only_direct("appending to the audit trail")
        chains = sorted(c for c, ev in events_by_chain.items() if ev)
        out: dict[str, list[AuditRecord]] = {c: [] for c in events_by_chain}
        if not chains:
            return out
        key = self.key
        event_ids: dict[str, str] = {}
        with contextlib.ExitStack() as stack:
            for c in chains:
                stack.enter_context(self._locked(c))
            # Under the chains' locks: an event another append of this host just wrote is not written twice.
            submitted = [i for c in chains for i, _ in events_by_chain[c] if i]
            if submitted:
                done = set(self.store.appended_events(chains, submitted))
                events_by_chain = {c: [(i, ev) for i, ev in events_by_chain[c] if not i or i not in done]
                                   for c in chains}
                chains = [c for c in chains if events_by_chain[c]]
            heads = self.store.heads(chains)
            new: list[AuditRecord] = []
            seals: list[AuditRecord] = []
            now = self.clock()
            for c in chains:
                head = heads.get(c) or Head(c, 0, GENESIS, 0, None, None)
                seq, prev, unsealed = head.next_seq, head.hash, head.unsealed
                batch: list[AuditRecord] = []
                for event_id, ev in events_by_chain[c]:
                    rec = make_record(c, seq, prev, ev, now)
                    batch.append(rec)
                    if event_id:
                        event_ids[rec.record_id] = event_id
                    seq, prev, unsealed = seq + 1, rec.record_hash, unsealed + 1
                since = head.last_seal_time or head.first_time or now
                sealed = unsealed >= self.seal_every or (now - since).total_seconds() >= self.seal_interval_s
                if sealed:
                    batch.append(self._seal_record(c, seq, prev, unsealed, now))
                if key is not None:  # one signature covers the batch: the links chain it to its last record
                    batch[-1] = replace(batch[-1], trail_sig=key.sign_record(batch[-1].record_hash))
                out[c] = batch[:-1] if sealed else batch
                new += out[c]
                seals += batch[-1:] if sealed else []
            self.store.insert(new + seals, event_ids)
            statements = self._anchor(seals, now) + self._adoption_statements(new, now)
        self._publish(new + seals, statements)
        return out

    def _adoption_statements(self, records: Sequence[AuditRecord], now: datetime) -> list[SealStatement]:
        """The signed seal of each legacy prefix an appended ``audit.adopt_legacy`` record vouches for
        (`adopt_legacy`; the record may come from another service through the events topic), anchored
        with the append. One naming a record that is not there with that hash gets no seal: `verify`
        then reports the prefix as unadopted."""
        key = self.key
        statements: list[SealStatement] = []
        for r in records:
            if r.action != ADOPT_ACTION or key is None:
                continue
            d = r.detail_dict()
            chain, raw_seq, head = str(d.get("chain", "")), d.get("prefix_head_seq"), str(d.get("prefix_head_hash", ""))
            seq = raw_seq if isinstance(raw_seq, int) and not isinstance(raw_seq, bool) else -1
            found = self.store.get(chain, seq) if seq >= 0 else []
            if len(found) != 1 or found[0].record_hash != head or found[0].compute_hash() != head:
                log.error("%s names %s#%s with hash %s, which is not in the trail: no seal anchored for it",
                          r.record_id, chain, seq, head[:16])
                continue
            statements.append(SealStatement(chain, seq, head, format_time(now), seq + 1, key.key_id).signed(key))
        self._store_anchor(statements)
        return statements

    def seal(self, chains: Sequence[str] | None = None) -> list[AuditRecord]:
        """Seal every chain (or ``chains``) that has records after its last seal."""
        self._only_direct("sealing the audit trail")
        names = list(chains) if chains is not None else self.store.chains()
        seals: list[AuditRecord] = []
        key = self.key
        with contextlib.ExitStack() as stack:
            for c in sorted(names):
                stack.enter_context(self._locked(c))
            now = self.clock()
            for head in self.store.heads(sorted(names)).values():
                if head.unsealed > 0:
                    rec = self._seal_record(head.chain, head.next_seq, head.hash, head.unsealed, now)
                    seals.append(rec if key is None else replace(rec, trail_sig=key.sign_record(rec.record_hash)))
            self.store.insert(seals)
            statements = self._anchor(seals, now)
        self._publish(seals, statements)
        return seals

    def heartbeat(self, chains: Sequence[str] | None = None) -> list[SealStatement]:
        """A signed statement naming the head of every chain (or ``chains``), new records or not:
        the periodic seal that makes a deleted tail visible. A head this trail did not sign (a record
        added by SQL) is not sealed: that would vouch for it; `verify` names it."""
        self._only_direct("sealing the audit trail")
        key = self.key
        if key is None:
            raise ValueError("no trail key: heartbeat seals need audit.seal_key_file")
        now = self.clock()
        names = sorted(chains) if chains is not None else self.store.chains()
        statements: list[SealStatement] = []
        for head in self.store.heads(names).values():
            seq = head.next_seq - 1
            found = self.store.get(head.chain, seq)
            if len(found) != 1 or found[0].compute_hash() != found[0].record_hash \
                    or not key.verify_record(found[0].record_hash, found[0].trail_sig):
                log.error("audit chain %s not sealed: its head %s#%d is not a record this trail signed "
                          "(run `linesight audit verify`)", head.chain, head.chain, seq)
                continue
            statements.append(SealStatement(head.chain, seq, found[0].record_hash, format_time(now), seq + 1,
                                            key.key_id).signed(key))
        self._store_anchor(statements)
        self._publish([], statements)
        return statements

    def run_sealer(
        self, stop: threading.Event, interval_s: float | None = None,
        each_round: Callable[[int | None], None] | None = None,
    ) -> None:
        """The sealing service: a heartbeat of every chain each ``interval_s`` (default
        ``seal_interval_s``) until ``stop``; a failed round is logged and retried next time.
        ``each_round(n)`` after every round: n heads anchored, None when the round failed."""
        while True:
            anchored: int | None = None
            try:
                anchored = len(self.heartbeat())
            except Exception:  # noqa: BLE001 - a sealer that dies leaves every later tail unsealed
                log.exception("audit heartbeat seal failed")
            if each_round is not None:
                try:
                    each_round(anchored)
                except Exception:  # noqa: BLE001 - the mirror or status file must not stop the sealing
                    log.exception("audit sealer round hook failed")
            if stop.wait(interval_s or self.seal_interval_s):
                return

    def adopt_legacy(
        self, chain: str, head_seq: int, head_hash: str, user: str, role: str, reason: str,
    ) -> AuditRecord:
        """``user`` vouches for ``chain``'s unsigned prefix ``#0..head_seq`` (written before signing
        began): an ``audit.adopt_legacy`` record in the ``system`` chain (who, when, why, how many
        records, the prefix head's hash), signed like every append; appending it anchors a signed
        seal of that head (`_adoption_statements`). `verify` then accepts the prefix and names the
        adoption."""
        key = self.verify_key
        if key is None:
            raise ValueError("no trail key: adopting a legacy prefix needs audit.seal_key_file or audit.seal_public_key")
        found = self.store.get(chain, head_seq)
        if len(found) != 1 or found[0].record_hash != head_hash or found[0].compute_hash() != head_hash:
            raise ValueError(f"{chain}#{head_seq} is not the record with hash {head_hash}: verify the trail again")
        return self.record(AuditEvent(
            ADOPT_ACTION, subject=chain, user=user, role=role, new_value=head_hash, reason=reason,
            detail={"chain": chain, "unsigned_records": head_seq + 1, "prefix_head_seq": head_seq,
                    "prefix_head_hash": head_hash, "key_id": key.key_id},
        ))

    def _seal_record(self, chain: str, seq: int, head_hash: str, count: int, now: datetime) -> AuditRecord:
        event = AuditEvent(
            SEAL_ACTION, subject=chain, new_value=head_hash, reason=f"seal after {count} record(s)",
            detail={"records_since_last_seal": count, "head_seq": seq - 1},
        )
        return make_record(chain, seq, head_hash, event, now)

    def _anchor(self, seals: Sequence[AuditRecord], now: datetime) -> list[SealStatement]:
        """The signed statements of seal records, stored in the anchor file."""
        key = self.key
        if key is None:
            return []
        statements = [SealStatement(s.chain, s.seq, s.record_hash, format_time(now), s.seq + 1, key.key_id).signed(key)
                      for s in seals]
        self._store_anchor(statements)
        return statements

    def _store_anchor(self, statements: Sequence[SealStatement]) -> None:
        if self.anchor is not None:
            self.anchor.append(statements)

    def checker(self, key: TrailKey | None = None) -> TrailCheck:
        """A check of this trail's chains and anchors with ``key`` (default: the one verify trusts)."""
        return TrailCheck(self.store, self.anchor, key or self.verify_key, self.clock)

    def anchored(
        self, key: TrailKey | None = None, topic: TopicSeals | None = None,
    ) -> tuple[dict[str, dict[int, str]], list[Break]]:
        """The anchored seals that verify (`TrailCheck.anchored`), with ``key`` or the trusted one."""
        return self.checker(key).anchored(topic)

    def anchors(self) -> dict[str, dict[int, str]]:
        return self.anchored()[0]

    def verify(
        self, chain: str | None = None, time_from: datetime | None = None, time_to: datetime | None = None,
        topic: TopicSeals | None = None,
    ) -> VerifyReport:
        """Check every chain (or ``chain``), in full or over a time range, and every signature;
        with ``topic``, against the seal topic's statements too (`TrailCheck.verify`)."""
        if self.verify_key is None and not self.direct:
            raise ValueError("verifying needs the trail's public key: set audit.seal_public_key "
                             "(`linesight audit key` where the audit service runs prints it)")
        return self.checker().verify(chain, time_from, time_to, topic)

    def _publish(self, records: Sequence[AuditRecord], statements: Sequence[SealStatement] = ()) -> None:
        if self.publisher is not None and (records or statements):
            self.publisher.publish(records)
            self.publisher.publish_seals(statements)
            self.publisher.flush()
