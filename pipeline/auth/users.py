"""Users in ClickHouse (``users``): one row per revision, the latest wins (FINAL)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline.audit.record import utcnow
from pipeline.auth.passwords import hash_password
from pipeline.auth.roles import ROLES
from pipeline.clickhouse import ClickHouseClient


@dataclass(frozen=True)
class User:
    username: str
    role: str
    password_hash: str
    enabled: bool
    revision: int
    changed_time: datetime
    changed_by: str


class UserStore:
    def __init__(self, client: ClickHouseClient, database: str) -> None:
        self.client = client
        self.table = f"{database}.users"

    def get(self, username: str) -> User | None:
        rows = self.client.query(
            f"SELECT username, role, password_hash, enabled, revision, changed_time, changed_by "
            f"FROM {self.table} FINAL WHERE username = {{u:String}}",
            {"u": username},
        ).rows
        return User(*rows[0]) if rows else None

    def list(self) -> list[User]:
        rows = self.client.query(
            f"SELECT username, role, password_hash, enabled, revision, changed_time, changed_by "
            f"FROM {self.table} FINAL ORDER BY username"
        ).rows
        return [User(*r) for r in rows]

    def count(self) -> int:
        return int(self.client.query(f"SELECT count() FROM {self.table} FINAL").scalar() or 0)

    def _write(self, user: User) -> User:
        self.client.insert_json_rows(self.table, [user.__dict__])
        return user

    def add(self, username: str, role: str, password: str, by: str) -> User:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        if not username or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"bad user name {username!r}: letters, digits, '-', '_', '.'")
        if self.get(username) is not None:
            raise ValueError(f"user {username!r} exists already")
        return self._write(User(username, role, hash_password(password), True, 1, utcnow(), by))

    def update(self, user: User, by: str, *, password: str | None = None, enabled: bool | None = None) -> User:
        return self._write(User(
            user.username, user.role,
            hash_password(password) if password is not None else user.password_hash,
            user.enabled if enabled is None else enabled,
            user.revision + 1, utcnow(), by,
        ))
