"""Login sessions for UIs: a random token, of which only the sha256 is stored, with an expiry."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from pipeline.audit.record import utcnow
from pipeline.clickhouse import ClickHouseClient


@dataclass(frozen=True)
class Session:
    username: str
    role: str
    created: datetime
    expires: datetime
    revoked: bool


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, client: ClickHouseClient, database: str) -> None:
        self.client = client
        self.table = f"{database}.sessions"

    def create(self, username: str, role: str, ttl_s: float, now: datetime | None = None) -> str:
        token = secrets.token_urlsafe(32)
        created = now or utcnow()
        self.client.insert_json_rows(self.table, [{
            "token_sha256": token_sha256(token), "username": username, "role": role, "created_time": created,
            "expires_time": created + timedelta(seconds=ttl_s), "revoked": False, "revision": 0,
        }])
        return token

    def get(self, token: str) -> Session | None:
        rows = self.client.query(
            f"SELECT username, role, created_time, expires_time, revoked FROM {self.table} FINAL "
            f"WHERE token_sha256 = {{t:String}}",
            {"t": token_sha256(token)},
        ).rows
        return Session(*rows[0]) if rows else None

    def revoke(self, token: str) -> None:
        s = self.get(token)
        if s is not None:
            self.client.insert_json_rows(self.table, [{
                "token_sha256": token_sha256(token), "username": s.username, "role": s.role,
                "created_time": s.created, "expires_time": s.expires, "revoked": True, "revision": 1,
            }])
