"""Decided review units as a dataset folder (docs/datasets.md): the labels a plant gets from the
people who looked at its hardest units, for the next model (trained offline, under change control:
the live model stays static).

Each unit's latest decision counts: recovered (good) units become `good` rows, confirmed
defective units `defect` rows of the class the person named; units nobody could decide, or still
awaiting QA, are left out (their label is not known). One row per kept station frame (the frames
of stations that passed a unit are not kept). Beside `labels.csv` (extra columns: the decision,
who made it, its audit record and signature) the folder holds `review_export.json`, which
training copies into the model card so a version names the decisions it learnt from.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.clickhouse import ClickHouseClient
from pipeline.datasets.folder import LABELS_FILE, REVIEW_EXPORT
from pipeline.review.rules import CANNOT_DECIDE, DEFECT, GOOD

EXTRA_COLUMNS = ("unit_id", "lot", "station", "decision", "decided_by", "role", "decided_time", "audit_record",
                 "signature")


class ExportError(ValueError):
    """Nothing to export, or an output folder that is not empty."""


@dataclass(frozen=True)
class ExportResult:
    out: Path
    rows: int
    units: int
    good: int
    defect: int
    skipped: dict[str, int]  # why units were left out -> count


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _latest_decisions(client: ClickHouseClient, db: str, since: datetime, product: str | None
                      ) -> list[dict[str, Any]]:
    rows = client.query(
        f"""SELECT unit_id, lot, product, decision, defect, user, role, decided_time, audit_record, signature
            FROM {db}.review_decisions FINAL
            WHERE decided_time >= {{since:DateTime64(6, 'UTC')}} {"AND product = {product:String}" if product else ""}
            ORDER BY unit_id, decided_time, audit_record""",
        {"since": since.strftime("%Y-%m-%d %H:%M:%S.%f"), **({"product": product} if product else {})},
    ).named()
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:
        latest[str(r["unit_id"])] = r
    return list(latest.values())


def export_reviewed(client: ClickHouseClient, db: str, out: Path, since: datetime, product: str | None = None,
                    qa_confirms: Callable[[str], bool] = lambda lot: False) -> ExportResult:
    """Write the dataset folder; `qa_confirms(lot)`: whether an operator's good in that lot counts only
    once QA confirmed it (its recipe's [review] rules)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty: export into a new folder (a dataset is written whole)")
    decisions = _latest_decisions(client, db, since, product)
    skipped: dict[str, int] = {}
    chosen = []
    for d in decisions:
        if d["decision"] == CANNOT_DECIDE:
            skipped["cannot decide (label unknown)"] = skipped.get("cannot decide (label unknown)", 0) + 1
        elif d["decision"] == GOOD and d["role"] != "qa" and qa_confirms(str(d["lot"])):
            skipped["good awaiting QA confirmation"] = skipped.get("good awaiting QA confirmation", 0) + 1
        else:
            chosen.append(d)
    if not chosen:
        raise ExportError(f"no decided review units since {since:%Y-%m-%d %H:%M:%S} UTC"
                          + (f" for product {product!r}" if product else "") + " to export")
    frames = client.query(
        f"""SELECT unit_id, station, jpeg_base64 FROM {db}.reject_images FINAL
            WHERE unit_id IN {{units:Array(String)}} ORDER BY unit_id, station""",
        {"units": [str(d["unit_id"]) for d in chosen]},
    ).rows
    by_unit: dict[str, list[tuple[str, str]]] = {}
    for unit, station, b64 in frames:
        by_unit.setdefault(str(unit), []).append((str(station), str(b64)))
    out.mkdir(parents=True, exist_ok=True)
    lines, good, defect, units = [], 0, 0, 0
    for d in chosen:
        kept = by_unit.get(str(d["unit_id"]), [])
        if not kept:
            skipped["no frame kept"] = skipped.get("no frame kept", 0) + 1
            continue
        units += 1
        label = "defect" if d["decision"] == DEFECT else "good"
        cls = str(d["defect"]) if label == "defect" else "none"
        for station, b64 in kept:
            rel = f"{label}/{_safe(str(d['unit_id']))}{'__' + _safe(station) if station else ''}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(base64.b64decode(b64))
            lines.append([rel, str(d["product"]), label, cls, str(d["unit_id"]), str(d["lot"]), station,
                          str(d["decision"]), str(d["user"]), str(d["role"]), str(d["decided_time"]),
                          str(d["audit_record"]), str(d["signature"])])
            good += label == "good"
            defect += label == "defect"
    with open(out / LABELS_FILE, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "product", "label", "defect", *EXTRA_COLUMNS])
        w.writerows(lines)
    manifest = {
        "exported_utc": datetime.now(UTC).isoformat(timespec="seconds"), "since_utc": since.isoformat(),
        "product": product or "", "units": units, "rows": len(lines),
        "decisions": sorted({row[11] for row in lines}), "skipped": skipped,
    }
    (out / REVIEW_EXPORT).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return ExportResult(out, len(lines), units, good, defect, skipped)

