"""Who may do what: authenticate (password or session), authorize (permission table), and audit
every refusal with its reason before refusing (docs/audit.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline.audit.record import AuditEvent, utcnow
from pipeline.audit.trail import AuditTrail
from pipeline.auth.passwords import verify_password
from pipeline.auth.roles import allowed, roles_with
from pipeline.auth.sessions import SessionStore
from pipeline.auth.users import UserStore


class AccessDenied(PermissionError):
    """Refused: the message is the reason (and it is in the audit trail)."""


@dataclass(frozen=True)
class Principal:
    username: str
    role: str


class Guard:
    def __init__(self, users: UserStore, sessions: SessionStore, trail: AuditTrail, session_ttl_s: float) -> None:
        self.users = users
        self.sessions = sessions
        self.trail = trail
        self.session_ttl_s = session_ttl_s

    def refuse(self, username: str, role: str, attempted: str, subject: str, reason: str) -> AccessDenied:
        """Record the refusal in the audit trail and return the error to raise."""
        self.trail.record(AuditEvent(
            "access.refused", subject=subject, user=username or "(none)", role=role or "(none)",
            new_value=attempted, reason=reason, detail={"attempted": attempted},
        ))
        return AccessDenied(f"refused: {reason}")

    def authenticate(self, username: str, password: str, attempted: str, subject: str = "") -> Principal:
        """The user behind a password (re-entered for every signed or privileged action)."""
        user = self.users.get(username)
        if user is None:
            raise self.refuse(username, "", attempted, subject, f"unknown user {username!r}")
        if not user.enabled:
            raise self.refuse(username, user.role, attempted, subject, f"user {username!r} is disabled")
        if not verify_password(user.password_hash, password):
            raise self.refuse(username, user.role, attempted, subject, f"wrong password for user {username!r}")
        return Principal(user.username, user.role)

    def authorize(self, who: Principal, permission: str, subject: str = "") -> Principal:
        if not allowed(who.role, permission):
            raise self.refuse(
                who.username, who.role, permission, subject,
                f"role {who.role!r} of user {who.username!r} may not {permission} "
                f"(allowed for: {', '.join(roles_with(permission)) or 'nobody'})",
            )
        return who

    def login(self, username: str, password: str) -> str:
        who = self.authenticate(username, password, "session.login")
        token = self.sessions.create(who.username, who.role, self.session_ttl_s)
        self.trail.record(AuditEvent("session.login", subject=who.username, user=who.username, role=who.role,
                                     detail={"ttl_s": self.session_ttl_s}))
        return token

    def from_session(self, token: str, attempted: str, now: datetime | None = None) -> Principal:
        s = self.sessions.get(token)
        if s is None:
            raise self.refuse("", "", attempted, "", "unknown session token")
        if s.revoked:
            raise self.refuse(s.username, s.role, attempted, "", f"session of {s.username!r} was logged out")
        when = now or utcnow()
        if when >= s.expires:
            raise self.refuse(s.username, s.role, attempted, "",
                              f"session of {s.username!r} expired at {s.expires:%Y-%m-%d %H:%M:%S} UTC")
        user = self.users.get(s.username)
        if user is None or not user.enabled:
            raise self.refuse(s.username, s.role, attempted, "", f"user {s.username!r} is disabled or removed")
        return Principal(user.username, user.role)  # the current role, not the one at login
