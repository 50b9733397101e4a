"""The trail key and signed seals: what makes the trail tamper-evident to an insider (docs/audit.md).

A sha256 chain alone is not: whoever may write the table can recompute every hash. Two things are
therefore authenticated with an Ed25519 key that neither the database nor the state folder holds:

* records: every append signs the ``record_hash`` of its last record (``trail_sig``); the chain
  links make that one signature cover the whole batch. A record appended by SQL, or a chain
  rewritten from some record on, has no valid signature at its end.
* seals: a `SealStatement` (chain, head seq, head hash, time, record count) signed by the same
  key and appended to anchors outside the state folder (an anchor file in its own folder, the
  ``linesight.audit-seals`` topic). The sealer writes one per chain at a fixed interval even when
  nothing was appended (a heartbeat naming the head), so a tail deleted after it is missed.

Verification needs only the public key (``audit.seal_public_key`` pins it; otherwise it is
derived from the key file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.audit.record import canonical_json

log = logging.getLogger(__name__)

RECORD_DOMAIN = b"linesight.audit.record\x00"
SEAL_DOMAIN = b"linesight.audit.seal\x00"


def default_audit_dir(state_dir: Path) -> Path:
    """``<state_dir>.audit``: the key and anchor folder next to the state folder, never inside it
    (the embedded stack; production points ``audit.seal_key_file``/``anchor_dir`` elsewhere)."""
    state_dir = Path(state_dir)
    return state_dir.with_name(state_dir.name + ".audit")


def ensure_outside(path: Path, state_dir: Path | None, what: str) -> None:
    """Refuse a key or anchor inside the state folder: whoever may write the database may write there."""
    if state_dir is None:
        return
    p, s = Path(path).resolve(), Path(state_dir).resolve()
    if p == s or s in p.parents:
        raise ValueError(f"the audit {what} {path} is inside the state folder {state_dir}: "
                         f"put it where the database's writers cannot write (docs/audit.md)")


class TrailKey:
    """An Ed25519 public key, with its private half where this process may sign."""

    def __init__(self, public: Ed25519PublicKey, private: Ed25519PrivateKey | None = None) -> None:
        self.public = public
        self._private = private
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_hex = raw.hex()
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    @classmethod
    def from_public_hex(cls, text: str) -> TrailKey:
        return cls(Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip())))

    @classmethod
    def load_or_create(cls, path: Path) -> TrailKey:
        """The private key in ``path`` (PEM, PKCS#8), created with mode 0600 (folder 0700) on first use."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            # Written whole under a private name, then linked into place: a process or thread that
            # creates it at the same moment finds either no key or a complete one, never half of one.
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                with contextlib.suppress(FileExistsError):  # another one created it first: use theirs
                    os.link(tmp, path)
                    log.warning("created the audit trail key %s: pin its public key in audit.seal_public_key", path)
            finally:
                tmp.unlink()
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(private.public_key(), private)

    @property
    def can_sign(self) -> bool:
        return self._private is not None

    def sign(self, message: bytes) -> str:
        if self._private is None:
            raise PermissionError("this process holds only the trail's public key: it cannot sign")
        return self._private.sign(message).hex()

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            self.public.verify(bytes.fromhex(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def sign_record(self, record_hash: str) -> str:
        return self.sign(RECORD_DOMAIN + record_hash.encode())

    def verify_record(self, record_hash: str, signature: str) -> bool:
        return bool(signature) and self.verify(RECORD_DOMAIN + record_hash.encode(), signature)


@dataclass(frozen=True)
class SealStatement:
    """Signed: chain ``chain`` held ``count`` records, seq 0..``head_seq``, ending in ``head_hash``, at ``time``."""

    chain: str
    head_seq: int
    head_hash: str
    time: str  # UTC, the record time format
    count: int
    key_id: str
    signature: str = ""

    def message(self) -> bytes:
        doc = asdict(self)
        del doc["signature"]
        return SEAL_DOMAIN + canonical_json(doc).encode()

    def signed(self, key: TrailKey) -> SealStatement:
        unsigned = replace(self, key_id=key.key_id, signature="")
        return replace(unsigned, signature=key.sign(unsigned.message()))

    def valid(self, key: TrailKey) -> bool:
        return self.key_id == key.key_id and self.count == self.head_seq + 1 and key.verify(
            self.message(), self.signature)

    def to_json(self) -> bytes:
        return canonical_json(asdict(self)).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> SealStatement:
        d = json.loads(text)
        return cls(str(d["chain"]), int(d["head_seq"]), str(d["head_hash"]), str(d["time"]), int(d["count"]),
                   str(d["key_id"]), str(d.get("signature", "")))


class AnchorFile:
    """Signed seals appended to ``<anchor_dir>/<database>/seals.jsonl`` (append-only: keep the folder
    on write-once storage, or ``chattr +a`` it; a rewrite cannot forge a seal, only drop some)."""

    def __init__(self, anchor_dir: Path, database: str) -> None:
        self.path = Path(anchor_dir) / database / "seals.jsonl"

    def append(self, statements: Iterable[SealStatement]) -> None:
        lines = [s.to_json().decode() + "\n" for s in statements]
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> tuple[list[SealStatement], list[str]]:
        """The statements, and a note for each line that is not one (a damaged anchor)."""
        statements, bad, _ = self.read_from(0)
        return statements, bad

    def read_from(self, offset: int) -> tuple[list[SealStatement], list[str], int]:
        """The complete lines after byte ``offset``: statements, damaged-line notes, and the offset
        after the last complete line (to read on from)."""
        if not self.path.is_file():
            return [], [], offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        out: list[SealStatement] = []
        bad: list[str] = []
        first = data[:end].decode("utf-8", errors="replace").splitlines()
        for n, line in enumerate(first, 1):
            if not line.strip():
                continue
            try:
                out.append(SealStatement.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                bad.append(f"{self.path}:{n}: not a seal statement ({exc})")
        return out, bad, offset + end


class Sealer(Protocol):
    """What the sealing service drives (`pipeline.audit.trail.AuditTrail`, which imports this module)."""

    def seal(self, chains: Sequence[str] | None = None) -> Sequence[object]: ...

    def heartbeat(self, chains: Sequence[str] | None = None) -> list[SealStatement]: ...

    def run_sealer(self, stop: threading.Event, interval_s: float | None = None,
                   each_round: Callable[[int | None], None] | None = None) -> None: ...


def run_sealing_service(
    trail: Sealer, stop: threading.Event, interval_s: float | None = None,
    each_round: Callable[[int | None], None] | None = None,
) -> list[SealStatement]:
    """The sealer (`linesight audit seal --watch`, the embedded stack, the compose service): a signed
    heartbeat of every chain each interval until ``stop``, then a final seal, so what was appended
    up to the shutdown is sealed and anchored too. Returns the final heartbeat's statements.
    ``each_round(n)``: after every round (n heads anchored, None if it failed): the compose service
    copies the seal topic into its anchor file and writes its health status there."""
    trail.run_sealer(stop, interval_s, each_round)
    try:
        trail.seal()
        return trail.heartbeat()
    except Exception:  # noqa: BLE001 - the records stay; the next sealer's first round anchors them
        log.exception("final audit seal failed")
        return []
