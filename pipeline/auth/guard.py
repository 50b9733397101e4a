"""Who may do what: authenticate (password or session), authorize (permission table), and audit
every refusal with its reason before refusing (docs/audit.md).

Against guessing: every password check runs argon2, for unknown and disabled users too (against a
decoy), so timing does not tell which user names exist; repeated failed log-ins lock the user
name and the source for a while (`Lockout`); refusals while locked and of unknown session tokens
are recorded once per source and window, then as one record with their count (`RefusalWindows`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.audit.record import AuditEvent, utcnow
from pipeline.audit.trail import AuditTrail
from pipeline.auth.passwords import verify_password
from pipeline.auth.roles import allowed, roles_with
from pipeline.auth.sessions import SessionStore
from pipeline.auth.throttle import Lockout, RefusalWindows
from pipeline.auth.users import UserStore

LOGIN = "session.login"
LOCKOUT = "session.lockout"


class AccessDenied(PermissionError):
    """Refused: the message is the reason (and it is in the audit trail)."""


class LockedOut(AccessDenied):
    """Refused without a password check: too many failed log-ins of this user name or source."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"refused: too many failed log-ins, try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


@dataclass
class LoginPolicy:
    """Lockout thresholds (`ServiceSettings.login_*`) and the window of aggregated refusal records."""

    max_failures: int = 5                 # per user name within window_s
    max_failures_per_source: int = 20     # per client address within window_s
    window_s: float = 900.0
    lockout_s: float = 300.0
    refusal_window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    by_user: Lockout = field(init=False)
    by_source: Lockout = field(init=False)
    refusals: RefusalWindows[tuple[str, str, str]] = field(init=False)  # (source, attempted, reason)

    def __post_init__(self) -> None:
        self.by_user = Lockout(self.max_failures, self.window_s, self.lockout_s, self.clock)
        self.by_source = Lockout(self.max_failures_per_source, self.window_s, self.lockout_s, self.clock)
        self.refusals = RefusalWindows(self.refusal_window_s, self.clock)


@dataclass(frozen=True)
class Principal:
    username: str
    role: str


class Guard:
    def __init__(self, users: UserStore, sessions: SessionStore, trail: AuditTrail, session_ttl_s: float,
                 policy: LoginPolicy | None = None) -> None:
        self.users = users
        self.sessions = sessions
        self.trail = trail
        self.session_ttl_s = session_ttl_s
        self.policy = policy or LoginPolicy()
        self._lock = threading.Lock()  # the dashboard calls in from worker threads

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
        matches = verify_password(user.password_hash if user else None, password)  # argon2 either way
        if user is None:
            raise self.refuse(username, "", attempted, subject, f"unknown user {username!r}")
        if not user.enabled:
            raise self.refuse(username, user.role, attempted, subject, f"user {username!r} is disabled")
        if not matches:
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

    def login(self, username: str, password: str, source: str = "") -> str:
        """A session token for a user name and password from ``source`` (the client's address)."""
        keys = ((self.policy.by_user, f"user {username!r}"), (self.policy.by_source, f"source {source or '?'}"))
        with self._lock:
            locked = max(((lock.remaining_s(key), key) for lock, key in keys), default=(0.0, ""))
        if locked[0] > 0:
            self.refuse_repeated(username, LOGIN, source, f"{locked[1]} is locked out after failed log-ins")
            raise LockedOut(locked[0])
        try:
            who = self.authenticate(username, password, LOGIN, subject=source)
        except AccessDenied:
            with self._lock:
                started = [key for lock, key in keys if lock.failed(key)]
            for key in started:
                self.trail.record(AuditEvent(
                    LOCKOUT, subject=source, user=username or "(none)", role="(none)",
                    reason=f"{key} locked for {self.policy.lockout_s:.0f} s after failed log-ins",
                    detail={"locked": key, "lockout_s": self.policy.lockout_s, "window_s": self.policy.window_s},
                ))
            raise
        with self._lock:
            self.policy.by_user.succeeded(keys[0][1])
        token = self.sessions.create(who.username, who.role, self.session_ttl_s)
        self.trail.record(AuditEvent(LOGIN, subject=who.username, user=who.username, role=who.role,
                                     detail={"ttl_s": self.session_ttl_s, "source": source}))
        return token

    def refuse_repeated(self, username: str, attempted: str, source: str, reason: str) -> AccessDenied:
        """`refuse`, recorded only for the first refusal of this source and reason in a window; the
        rest are counted into one record (`flush_refusals`)."""
        self.flush_refusals()
        with self._lock:
            first = self.policy.refusals.admit((source, attempted, reason))
        if first:
            return self.refuse(username, "", attempted, source, f"{reason} (from {source or '?'})")
        return AccessDenied(f"refused: {reason}")

    def flush_refusals(self) -> None:
        """One audit record per closed window of repeated refusals, with their count."""
        with self._lock:
            due = self.policy.refusals.due()
        for (source, attempted, reason), count in due:
            self.trail.record(AuditEvent(
                "access.refused", subject=source, user="(repeated)", role="(none)", new_value=attempted,
                reason=f"{count} more: {reason} (from {source or '?'}, within {self.policy.refusal_window_s:.0f} s)",
                detail={"attempted": attempted, "count": count, "window_s": self.policy.refusal_window_s},
            ))

    def from_session(self, token: str, attempted: str, now: datetime | None = None, source: str = "") -> Principal:
        s = self.sessions.get(token)
        if s is None:
            raise self.refuse_repeated("", attempted, source, "unknown session token")
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
