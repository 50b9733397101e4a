"""Independent test sets: registered, hash-locked, never trained on, every read audited.

A validation report's figures mean something only when the model never saw the units they are
counted on (draft EU GMP Annex 22: independent test data). So a test set is a dataset folder
(docs/datasets.md) that QA registers, e-signed, in ``<state_dir>/test_sets.json`` with its
dataset hash; the sha256 of each of its images is kept in ``<state_dir>/test_sets/<name>.sha256``.
From then on `training_refusal` refuses to train on the folder, on any folder with the same
dataset hash, and on any folder holding one of its images; and `read_testset` is the only way a
report reads it: it checks the hash and appends a ``validation.testset.read`` record (who, which
set, why) before handing the rows out.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.audit.record import AuditEvent, AuditRecord
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal
from pipeline.datasets.folder import Dataset, DatasetError, dataset_hash, load_dataset
from pipeline.settings import Settings

REGISTER_ACTION = "validation.testset.register"
READ_ACTION = "validation.testset.read"
REGISTRY_FILE = "test_sets.json"
HASHES_DIR = "test_sets"


class TestSetError(ValueError):
    """A test set that cannot be registered or read, or a training refused; the message says why."""

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class TestSet:
    """One registered, locked test set."""

    __test__ = False

    name: str
    path: str
    sha256: str  # dataset_hash: images' bytes and labels, independent of file names and order
    product: str
    units: int
    defects: int
    classes: list[str]
    registered_by: str
    registered_at: str
    audit_record: str = ""
    signature: str = ""


def registry_path(settings: Settings) -> Path:
    return settings.state_dir / REGISTRY_FILE


def _hashes_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / HASHES_DIR / f"{name}.sha256"


def load_registry(settings: Settings) -> dict[str, TestSet]:
    """Registered sets by name ({} before the first registration)."""
    path = registry_path(settings)
    if not path.is_file():
        return {}
    try:
        return {k: TestSet(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except (ValueError, TypeError) as exc:
        raise TestSetError(f"test set registry {path} is unreadable: {exc}") from None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _image_hashes(dataset: Dataset) -> list[str]:
    return sorted({hashlib.sha256(r.image.read_bytes()).hexdigest() for r in dataset.rows})


def register_testset(
    settings: Settings, trail: AuditTrail, guard: Guard, who: Principal, data: Path, name: str, product: str,
    reason: str, meaning: str = "approved",
) -> tuple[TestSet, AuditRecord, AuditRecord]:
    """Check, hash and lock `data` as test set `name` of `product`; audit and e-sign it.

    A name is registered once (a set is never silently replaced: register a new name)."""
    from pipeline.auth.signatures import sign_record

    guard.authorize(who, REGISTER_ACTION, name)
    if not reason.strip():
        raise guard.refuse(who.username, who.role, REGISTER_ACTION, name, "a reason is required")
    if not name.strip() or "/" in name or name.startswith("."):
        raise TestSetError(f"test set name {name!r}: a plain name is required")
    sets = load_registry(settings)
    if name in sets:
        raise TestSetError(f"test set {name!r} is already registered ({sets[name].path}, {sets[name].sha256}): "
                           "a registered set is never replaced; register it under a new name")
    try:
        dataset = load_dataset(Path(data), product)
    except DatasetError as exc:
        raise TestSetError(str(exc)) from None
    others = sorted(set(load_dataset(Path(data)).products) - {product})
    if others:
        raise TestSetError(f"test set {dataset.root} holds units of other products than {product!r}: "
                           + ", ".join(others))
    if not any(r.is_defect for r in dataset.rows) or all(r.is_defect for r in dataset.rows):
        raise TestSetError(f"test set {dataset.root} needs both good and defective units")
    entry = TestSet(
        name=name, path=str(dataset.root), sha256=dataset_hash(dataset), product=product, units=len(dataset),
        defects=sum(r.is_defect for r in dataset.rows), classes=sorted({r.defect for r in dataset.rows if r.is_defect}),
        registered_by=who.username, registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    record = trail.record(AuditEvent(
        REGISTER_ACTION, subject=name, user=who.username, role=who.role, new_value=entry.sha256, reason=reason,
        detail=asdict(entry),
    ))
    signature = sign_record(trail, guard, who, record.record_id, meaning, reason)
    entry = TestSet(**{**asdict(entry), "audit_record": record.record_id, "signature": signature.record_id})
    _write_atomic(_hashes_path(settings, name), "\n".join(_image_hashes(dataset)) + "\n")
    sets[name] = entry
    _write_atomic(registry_path(settings),
                  json.dumps({k: asdict(v) for k, v in sorted(sets.items())}, indent=2) + "\n")
    return entry, record, signature


def locked_hashes(settings: Settings, name: str) -> set[str]:
    path = _hashes_path(settings, name)
    if not path.is_file():
        return set()
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def locked_reason(settings: Settings, data: Path) -> str | None:
    """How dataset folder `data` holds locked test data (None: it holds none): it is the folder of
    a locked set (or lies in it), has its dataset hash, or holds one of its images."""
    sets = load_registry(settings)
    if not sets:
        return None
    root = Path(data).resolve()
    for s in sets.values():
        locked = Path(s.path).resolve()
        if root == locked or locked in root.parents:
            return f"{data} is (or lies in) the locked test set {s.name!r} ({s.path})"
    try:
        dataset = load_dataset(root)
    except DatasetError:
        return None  # not a dataset folder: the command itself says what is wrong with it
    digest = dataset_hash(dataset)
    mine = set(_image_hashes(dataset))
    for s in sets.values():
        if digest == s.sha256:
            return f"{data} is the locked test set {s.name!r} (same dataset hash {s.sha256})"
        shared = mine & locked_hashes(settings, s.name)
        if shared:
            return f"{data} holds {len(shared)} image(s) of the locked test set {s.name!r} ({s.path})"
    return None


def training_refusal(settings: Settings, data: Path) -> str | None:
    """Why training on dataset folder `data` is refused (None: it holds no locked test data)."""
    reason = locked_reason(settings, data)
    return None if reason is None else f"{reason}: test units are never trained on"


def evaluation_refusal(settings: Settings, data: Path) -> str | None:
    """Why an unattributed read (`linesight evaluate`) of `data` is refused: every read of a
    locked set is audited, and only a validation report reads it (None: no locked data)."""
    reason = locked_reason(settings, data)
    return None if reason is None else (f"{reason}: a locked test set is read only by `linesight validation "
                                        "report`, which records who read it and why")


def read_testset(
    settings: Settings, trail: AuditTrail, who: Principal, name: str, why: str, detail: dict[str, object],
) -> tuple[TestSet, Dataset, AuditRecord]:
    """The locked set's rows, after checking its hash, with a ``validation.testset.read`` record.

    `why` and `detail` (e.g. the model and version it is read for) go into the record."""
    entry = load_registry(settings).get(name)
    if entry is None:
        raise TestSetError(f"test set {name!r} is not registered (linesight validation testset register)")
    try:
        dataset = load_dataset(Path(entry.path), entry.product)
    except DatasetError as exc:
        raise TestSetError(f"test set {name!r}: {exc}") from None
    digest = dataset_hash(dataset)
    if digest != entry.sha256:
        raise TestSetError(f"test set {name!r} at {entry.path} hashes to {digest}, registered as {entry.sha256}: "
                           "it changed after registration")
    record = trail.record(AuditEvent(
        READ_ACTION, subject=name, user=who.username, role=who.role, new_value=entry.sha256, reason=why,
        detail={"path": entry.path, **detail},
    ))
    return entry, dataset, record


def reads_of(trail: AuditTrail, model: str, version: int) -> list[AuditRecord]:
    """Every recorded read of any test set for `model` `version`, oldest first."""
    found = [r for r in trail.store.by_action(READ_ACTION)
             if r.detail_dict().get("model") == model and r.detail_dict().get("version") == version]
    return sorted(found, key=lambda r: r.time)
