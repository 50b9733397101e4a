"""Users, roles and sessions: argon2 password hashes, least privilege, and every refusal (unknown
user, wrong password, expired session, beyond the role) refused with its reason AND audited.
The CLI runs in-process against the session's chDB directory, in a database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support import cli_database

from pipeline.audit.record import utcnow
from pipeline.audit.trail import AuditTrail
from pipeline.auth import guard as guard_module
from pipeline.auth.guard import AccessDenied, Guard, LockedOut, LoginPolicy
from pipeline.auth.passwords import hash_password, verify_password
from pipeline.auth.roles import PERMISSIONS, allowed
from pipeline.auth.sessions import SessionStore
from pipeline.auth.users import UserStore
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.settings import Settings


@pytest.fixture()
def gmp_db(
    embedded_settings: Settings, chdb_client: ChdbClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh database (no users yet) that the in-process CLI uses."""
    db = cli_database("gmp", embedded_settings, chdb_client, monkeypatch)
    yield db


def _pw(tmp_path: Path, name: str, password: str) -> str:
    path = tmp_path / f"{name}.pw"
    path.write_text(password + "\n")
    return str(path)


def _last_refusal(client: ChdbClient, db: str) -> dict:
    rows = client.query(
        f"SELECT user, role, new_value, reason, subject FROM {db}.audit_records "
        "WHERE action = 'access.refused' ORDER BY seq DESC LIMIT 1"
    ).named()
    return rows[0]


def test_passwords_are_argon2_hashed() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$argon2id$") and "correct horse" not in h
    assert verify_password(h, "correct horse") and not verify_password(h, "wrong horse")
    assert not verify_password("not-a-hash", "x")
    with pytest.raises(ValueError, match="too short"):
        hash_password("short")


def test_least_privilege() -> None:
    assert not allowed("operator", "model.deploy") and not allowed("operator", "threshold.change")
    assert not allowed("operator", "audit.sign") and not allowed("operator", "user.add")
    assert allowed("qa", "model.deploy") and allowed("qa", "threshold.change") and allowed("qa", "audit.sign")
    assert not allowed("admin", "model.deploy")  # separation of duties: admins manage users
    assert allowed("admin", "user.add") and not allowed("qa", "user.add")
    assert all("audit.verify" in p for p in PERMISSIONS.values())


def test_users_cli_bootstrap_roles_and_refusals(
    gmp_db: str, chdb_client: ChdbClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin_pw, qa_pw, op_pw = _pw(tmp_path, "a", "admin-pass-1"), _pw(tmp_path, "q", "qa-pass-12"), _pw(tmp_path, "o", "op-pass-12")
    # Bootstrap: the first user must be an admin, and needs no --user.
    assert main(["users", "add", "carol", "--role", "qa", "--new-password-file", qa_pw]) == 1
    assert "first user must be an admin" in capsys.readouterr().err
    assert main(["users", "add", "ada", "--role", "admin", "--new-password-file", admin_pw]) == 0
    assert "bootstrap admin" in capsys.readouterr().out
    # From now on adding a user needs an authenticated admin.
    assert main(["users", "add", "carol", "--role", "qa", "--new-password-file", qa_pw]) == 1
    assert "needs --user" in capsys.readouterr().err
    admin = ["--user", "ada", "--password-file", admin_pw]
    assert main(["users", "add", "carol", "--role", "qa", "--new-password-file", qa_pw, *admin]) == 0
    assert main(["users", "add", "otto", "--role", "operator", "--new-password-file", op_pw, *admin]) == 0
    capsys.readouterr()
    # An operator cannot add users, deploy a model or change a threshold: refused, and audited.
    op = ["--user", "otto", "--password-file", op_pw]
    assert main(["users", "add", "eve", "--role", "admin", "--new-password-file", op_pw, *op]) == 1
    assert "role 'operator' of user 'otto' may not user.add" in capsys.readouterr().err
    assert main(["models", "deploy", "tablet-round-white-10mm", "--version", "2", "--reason", "x", *op]) == 1
    assert "may not model.deploy" in capsys.readouterr().err
    refusal = _last_refusal(chdb_client, gmp_db)
    assert (refusal["user"], refusal["role"], refusal["new_value"]) == ("otto", "operator", "model.deploy")
    assert main(["audit", "log", "threshold.change", "--subject", "tablet", "--old", "0.5", "--new", "0.4",
                 "--reason", "x", *op]) == 1
    assert "may not threshold.change" in capsys.readouterr().err
    # ... but may record what operators do.
    assert main(["audit", "log", "alarm.acknowledge", "--subject", "plc-unreachable", "--reason", "seen", *op]) == 0
    # Unknown user and wrong password: refused, audited.
    assert main(["audit", "log", "line.stop", "--subject", "line-1", "--reason", "x", "--user", "nobody",
                 "--password-file", op_pw]) == 1
    assert "unknown user 'nobody'" in capsys.readouterr().err
    assert _last_refusal(chdb_client, gmp_db)["user"] == "nobody"
    assert main(["audit", "log", "line.stop", "--subject", "line-1", "--reason", "x", "--user", "otto",
                 "--password-file", qa_pw]) == 1
    assert "wrong password for user 'otto'" in capsys.readouterr().err
    assert "wrong password" in _last_refusal(chdb_client, gmp_db)["reason"]
    # Disable and password change.
    assert main(["users", "disable", "otto", "--reason", "left", *admin]) == 0
    assert main(["audit", "log", "line.stop", "--subject", "line-1", "--reason", "x", *op]) == 1
    assert "is disabled" in capsys.readouterr().err
    new_pw = _pw(tmp_path, "q2", "qa-pass-new")
    assert main(["users", "passwd", "carol", "--new-password-file", new_pw, "--user", "carol",
                 "--password-file", qa_pw]) == 0
    assert main(["users", "list"]) == 0
    listing = capsys.readouterr().out
    assert "otto" in listing and "DISABLED" in listing and "carol" in listing
    assert main(["audit", "log", "threshold.change", "--subject", "tablet", "--old", "0.5", "--new", "0.4",
                 "--reason", "validated", "--user", "carol", "--password-file", new_pw]) == 0
    actions = [r[0] for r in chdb_client.query(f"SELECT action FROM {gmp_db}.audit_records ORDER BY seq").rows]
    for needed in ("user.add", "user.disable", "user.passwd", "access.refused", "alarm.acknowledge", "threshold.change"):
        assert needed in actions
    assert main(["audit", "verify", "--chain", "system"]) == 0


def test_sessions_expire_and_refusals_are_audited(
    gmp_db: str, embedded_settings: Settings, chdb_client: ChdbClient, tmp_path: Path
) -> None:
    trail = AuditTrail(chdb_client, gmp_db, state_dir=tmp_path)
    users = UserStore(chdb_client, gmp_db)
    guard = Guard(users, SessionStore(chdb_client, gmp_db), trail, session_ttl_s=60)
    users.add("sam", "qa", "sam-pass-123", "test")
    token = guard.login("sam", "sam-pass-123")
    who = guard.from_session(token, "model.deploy")
    assert (who.username, who.role) == ("sam", "qa")
    with pytest.raises(AccessDenied, match="expired at"):
        guard.from_session(token, "model.deploy", now=utcnow() + timedelta(seconds=61))
    assert "expired" in _last_refusal(chdb_client, gmp_db)["reason"]
    with pytest.raises(AccessDenied, match="unknown session token"):
        guard.from_session("forged-token", "model.deploy")
    guard.sessions.revoke(token)
    with pytest.raises(AccessDenied, match="logged out"):
        guard.from_session(token, "model.deploy")
    assert trail.verify(chain="system").ok


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _guard(client: ChdbClient, db: str, tmp_path: Path, **policy: Any) -> Guard:
    trail = AuditTrail(client, db, state_dir=tmp_path)
    return Guard(UserStore(client, db), SessionStore(client, db), trail, 60, LoginPolicy(**policy))


def _records(client: ChdbClient, db: str, action: str) -> list[dict]:
    return client.query(
        f"SELECT user, subject, reason, detail FROM {db}.audit_records WHERE action = {{a:String}} ORDER BY seq",
        {"a": action},
    ).named()


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Every argon2 verification the Guard asks for (the stored hash, None for the decoy)."""
    calls: list[str | None] = []

    def counting(stored_hash: str | None, password: str) -> bool:
        calls.append(stored_hash)
        return verify_password(stored_hash, password)

    monkeypatch.setattr(guard_module, "verify_password", counting)
    return calls


def test_lockout_after_failures_bounded_audit_and_unlock(
    gmp_db: str, chdb_client: ChdbClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    guard = _guard(chdb_client, gmp_db, tmp_path, max_failures=3, max_failures_per_source=1000,
                   window_s=60, lockout_s=30, refusal_window_s=10, clock=clock)
    guard.users.add("lee", "operator", "lee-pass-123", "test")
    hashes = _count_hashes(monkeypatch)
    outcomes = []
    for i in range(100):  # the tester's 100 wrong passwords, then the right one
        with pytest.raises(AccessDenied) as refused:
            guard.login("lee", f"wrong-{i}", "10.0.0.9")
        outcomes.append(type(refused.value))
    with pytest.raises(LockedOut) as locked:
        guard.login("lee", "lee-pass-123", "10.0.0.9")
    assert outcomes[:3] == [AccessDenied] * 3 and set(outcomes[3:]) == {LockedOut}
    assert len(hashes) == 3, "a locked-out attempt is refused without checking its password"
    assert 0 < locked.value.retry_after_s <= 30
    # Audited, bounded: 3 wrong passwords, the lockout, the first locked refusal; the other 97 later as one count.
    assert len(_records(chdb_client, gmp_db, "session.lockout")) == 1
    assert len(_records(chdb_client, gmp_db, "access.refused")) == 4
    clock.t += 11
    guard.flush_refusals()
    refused_records = _records(chdb_client, gmp_db, "access.refused")
    assert len(refused_records) == 5 and '"count":97' in refused_records[-1]["detail"]
    assert "locked out" in refused_records[-1]["reason"] and refused_records[-1]["subject"] == "10.0.0.9"
    clock.t += 30  # the lockout is over
    assert guard.from_session(guard.login("lee", "lee-pass-123", "10.0.0.9"), "dashboard.view").username == "lee"
    assert guard.trail.verify(chain="system").ok


def test_unknown_user_names_lock_and_a_source_locks_across_names(
    gmp_db: str, chdb_client: ChdbClient, tmp_path: Path
) -> None:
    clock = FakeClock()
    guard = _guard(chdb_client, gmp_db, tmp_path, max_failures=2, max_failures_per_source=4,
                   window_s=60, lockout_s=30, clock=clock)
    guard.users.add("kim", "operator", "kim-pass-123", "test")
    for _ in range(2):
        with pytest.raises(AccessDenied):
            guard.login("nobody", "x" * 10, "10.0.0.1")
    with pytest.raises(LockedOut):  # an unknown name locks like a known one: no enumeration
        guard.login("nobody", "x" * 10, "10.0.0.1")
    for name in ("a1", "a2"):  # spraying names from one address locks the address
        with pytest.raises(AccessDenied):
            guard.login(name, "x" * 10, "10.0.0.1")
    with pytest.raises(LockedOut):
        guard.login("kim", "kim-pass-123", "10.0.0.1")
    assert guard.login("kim", "kim-pass-123", "10.0.0.2")  # another address is not affected


def test_unknown_known_and_disabled_users_all_run_argon2(
    gmp_db: str, chdb_client: ChdbClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing tells nothing about which names exist: each refusal costs exactly one argon2 check."""
    guard = _guard(chdb_client, gmp_db, tmp_path, max_failures=0, max_failures_per_source=0)
    guard.users.add("ann", "operator", "ann-pass-123", "test")
    guard.users.update(guard.users.add("dis", "operator", "dis-pass-123", "test"), "test", enabled=False)
    hashes = _count_hashes(monkeypatch)
    for name, password in (("ghost", "ghost-pass-123"), ("ann", "wrong-pass-123"), ("dis", "dis-pass-123")):
        before = len(hashes)
        with pytest.raises(AccessDenied):
            guard.login(name, password)
        assert len(hashes) == before + 1, name
    assert hashes[0] is None and all(h and h.startswith("$argon2id$") for h in hashes[1:])


HOSTILE_NAMES = ["ott\\x6f", "otto\\", "\\", "ott\\o", "otto'", "o'tto", "otto\x00", "\x00", 'ot"to', "ot`to",
                 "otto\\0", "otto\t", "otto\n", "otto' OR '1'='1"]


def test_hostile_user_names_match_nobody_and_are_audited(
    gmp_db: str, chdb_client: ChdbClient, tmp_path: Path
) -> None:
    guard = _guard(chdb_client, gmp_db, tmp_path, max_failures=0, max_failures_per_source=0)
    guard.users.add("otto", "operator", "otto-pass-123", "test")
    for name in HOSTILE_NAMES:
        assert guard.users.get(name) is None, repr(name)
        with pytest.raises(AccessDenied, match="unknown user"):
            guard.login(name, "otto-pass-123", "10.0.0.3")
        assert _last_refusal(chdb_client, gmp_db)["user"] == name
    assert [r["user"] for r in _records(chdb_client, gmp_db, "access.refused")] == HOSTILE_NAMES
    assert guard.users.get("otto") is not None
    assert guard.trail.verify(chain="system").ok


def test_forged_session_cookies_are_audited_once_per_source_and_window(
    gmp_db: str, chdb_client: ChdbClient, tmp_path: Path
) -> None:
    clock = FakeClock()
    guard = _guard(chdb_client, gmp_db, tmp_path, refusal_window_s=10, clock=clock)
    for i in range(300):
        with pytest.raises(AccessDenied, match="unknown session token"):
            guard.from_session(f"forged-{i}", "dashboard.view", source="10.0.0.7")
    with pytest.raises(AccessDenied):
        guard.from_session("forged", "dashboard.view", source="10.0.0.8")
    assert len(_records(chdb_client, gmp_db, "access.refused")) == 2  # one per source
    clock.t += 10
    guard.flush_refusals()
    records = _records(chdb_client, gmp_db, "access.refused")
    assert len(records) == 3 and '"count":299' in records[-1]["detail"] and records[-1]["subject"] == "10.0.0.7"
    guard.flush_refusals()
    assert len(_records(chdb_client, gmp_db, "access.refused")) == 3
