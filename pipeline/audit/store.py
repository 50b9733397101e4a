"""Audit records in ClickHouse (``audit_records``): append and read, never update or delete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.audit.record import FIELDS, SEAL_ACTION, AuditRecord
from pipeline.clickhouse import ClickHouseClient

TABLE = "audit_records"
_COLUMNS = ", ".join(f"`{f}`" for f in FIELDS)


def _in(prefix: str, values: Sequence[str], params: dict[str, Any]) -> str:
    """``({p0:String}, {p1:String}, ...)`` with the values bound (no array parameters: the two
    backends serialise those differently)."""
    names = [f"{prefix}{i}" for i in range(len(values))]
    params.update(zip(names, (str(v) for v in values), strict=True))
    return "(" + ", ".join(f"{{{n}:String}}" for n in names) + ")"


@dataclass(frozen=True)
class Head:
    """The end of a chain: where the next record goes and when it was last sealed."""

    chain: str
    next_seq: int
    hash: str
    unsealed: int  # records after the last seal
    last_seal_time: datetime | None
    first_time: datetime | None


class AuditStore:
    def __init__(self, client: ClickHouseClient, database: str) -> None:
        self.client = client
        self.table = f"{database}.{TABLE}"

    def insert(self, records: Sequence[AuditRecord], event_ids: dict[str, str] | None = None) -> None:
        """Append ``records``; ``event_ids`` (record id -> submitted event id) marks the records of
        submitted events, so a redelivered event is recognised (`appended_events`)."""
        if records:
            ids = event_ids or {}
            self.client.insert_json_rows(
                self.table, [r.to_row() | {"event_id": ids.get(r.record_id, "")} for r in records])

    def appended_events(self, chains: Sequence[str], event_ids: Sequence[str]) -> dict[str, AuditRecord]:
        """The records of submitted events already in the trail, by event id."""
        if not event_ids or not chains:
            return {}
        params: dict[str, Any] = {}
        rows = self.client.query(
            f"""SELECT {_COLUMNS}, event_id FROM {self.table}
                WHERE chain IN {_in("c", chains, params)} AND event_id IN {_in("e", event_ids, params)}""",
            params,
        ).named()
        return {str(r["event_id"]): AuditRecord.from_mapping(r) for r in rows}

    def heads(self, chains: Sequence[str]) -> dict[str, Head]:
        if not chains:
            return {}
        params: dict[str, Any] = {}
        rows = self.client.query(
            f"""SELECT chain, max(seq) AS head_seq, argMax(record_hash, seq) AS head_hash,
                       countIf(action = '{SEAL_ACTION}') AS seals,
                       maxIf(seq, action = '{SEAL_ACTION}') AS seal_seq,
                       maxIf(time, action = '{SEAL_ACTION}') AS seal_time, min(time) AS first_time
                FROM {self.table} WHERE chain IN {_in("c", chains, params)} GROUP BY chain""",
            params,
        ).named()
        heads = {}
        for r in rows:
            sealed = int(r["seals"]) > 0
            unsealed = int(r["head_seq"]) - int(r["seal_seq"]) if sealed else int(r["head_seq"]) + 1
            heads[r["chain"]] = Head(
                r["chain"], int(r["head_seq"]) + 1, str(r["head_hash"]), unsealed,
                r["seal_time"] if sealed else None, r["first_time"],
            )
        return heads

    def chains(self) -> list[str]:
        return [str(r[0]) for r in self.client.query(f"SELECT DISTINCT chain FROM {self.table} ORDER BY chain").rows]

    def existing_subjects(self, chains: Sequence[str], action: str, subjects: Sequence[str]) -> set[tuple[str, str]]:
        """(chain, subject) pairs already recorded for ``action``: redelivery must not add links."""
        if not subjects:
            return set()
        params: dict[str, Any] = {"action": action}
        rows = self.client.query(
            f"""SELECT DISTINCT chain, subject FROM {self.table}
                WHERE chain IN {_in("c", chains, params)} AND action = {{action:String}}
                  AND subject IN {_in("s", subjects, params)}""",
            params,
        ).rows
        return {(str(c), str(s)) for c, s in rows}

    def read(
        self,
        chain: str | None = None,
        time_from: datetime | None = None,
        time_to: datetime | None = None,
    ) -> dict[str, tuple[list[AuditRecord], AuditRecord | None]]:
        """Per chain: its records (whole chain, or the seq span whose times fall in the range) and
        the record just before the span (to check the first link), None when the span starts the chain."""
        where: list[str] = []
        params: dict[str, Any] = {}
        if chain:
            where.append("chain = {chain:String}")
            params["chain"] = chain
        base = " AND ".join(where) or "1"
        ranged = time_from is not None or time_to is not None
        if ranged:
            cond = [base]
            if time_from is not None:
                cond.append("time >= {t0:DateTime64(6, 'UTC')}")
                params["t0"] = time_from.strftime("%Y-%m-%d %H:%M:%S.%f")
            if time_to is not None:
                cond.append("time <= {t1:DateTime64(6, 'UTC')}")
                params["t1"] = time_to.strftime("%Y-%m-%d %H:%M:%S.%f")
            spans = self.client.query(
                f"SELECT chain, min(seq), max(seq) FROM {self.table} WHERE {' AND '.join(cond)} GROUP BY chain",
                params,
            ).rows
            span_sql = " OR ".join(
                f"(chain = {{c{i}:String}} AND seq BETWEEN {max(int(lo) - 1, 0)} AND {int(hi)})"
                for i, (_, lo, hi) in enumerate(spans)
            ) or "0"
            params |= {f"c{i}": str(c) for i, (c, _, _) in enumerate(spans)}
            sql = f"SELECT {_COLUMNS} FROM {self.table} WHERE {span_sql} ORDER BY chain, seq, record_hash"
            starts = {str(c): int(lo) for c, lo, _ in spans}
        else:
            sql = f"SELECT {_COLUMNS} FROM {self.table} WHERE {base} ORDER BY chain, seq, record_hash"
            starts = {}
        out: dict[str, list[AuditRecord]] = {}
        for row in self.client.query(sql, params).named():
            rec = AuditRecord.from_mapping(row)
            out.setdefault(rec.chain, []).append(rec)
        result: dict[str, tuple[list[AuditRecord], AuditRecord | None]] = {}
        for c, recs in out.items():
            start = starts.get(c, 0)
            before = next((r for r in recs if r.seq == start - 1), None) if start > 0 else None
            result[c] = ([r for r in recs if r.seq >= start], before)
        return result

    def get(self, chain: str, seq: int) -> list[AuditRecord]:
        rows = self.client.query(
            f"SELECT {_COLUMNS} FROM {self.table} WHERE chain = {{chain:String}} AND seq = {{seq:UInt64}}",
            {"chain": chain, "seq": seq},
        ).named()
        return [AuditRecord.from_mapping(r) for r in rows]

    def by_action(self, action: str) -> list[AuditRecord]:
        rows = self.client.query(
            f"SELECT {_COLUMNS} FROM {self.table} WHERE action = {{a:String}} ORDER BY chain, seq", {"a": action}
        ).named()
        return [AuditRecord.from_mapping(r) for r in rows]

    def by_ids(self, ids: Sequence[str]) -> dict[str, AuditRecord]:
        pairs = []
        for rid in ids:
            chain, _, seq = rid.rpartition("#")
            if chain and seq.isdigit():
                pairs.append((chain, int(seq)))
        if not pairs:
            return {}
        cond = " OR ".join(f"(chain = {{c{i}:String}} AND seq = {s})" for i, (_, s) in enumerate(pairs))
        rows = self.client.query(
            f"SELECT {_COLUMNS} FROM {self.table} WHERE {cond}", {f"c{i}": c for i, (c, _) in enumerate(pairs)}
        ).named()
        return {r.record_id: r for r in map(AuditRecord.from_mapping, rows)}
