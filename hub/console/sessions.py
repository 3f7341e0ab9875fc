"""Server-side console sessions and their CSRF tokens.

The browser holds only a random token in a `__Host-` cookie (Secure, HttpOnly,
SameSite=Strict, path /); the database keeps its SHA-256, the user, the session's CSRF token
(synchronizer pattern: every state-changing form carries it and the server compares) and
when the session ends. Logging out, a new password, a role change or disabling the account
deletes the row, so the cookie stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete
from sqlmodel import col

from hub.console.models import ConsoleSession, ConsoleUser
from hub.db import session
from hub.rollouts.auth import Principal, Role

COOKIE = "__Host-edge-hub-session"
LIFETIME = timedelta(hours=8)


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf_token: str
    must_change_password: bool

    def csrf_ok(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf_token.encode())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(engine: Engine, user: str) -> str:
    """A new session for `user`; returns the cookie's token (shown to no one else)."""
    token = secrets.token_urlsafe(32)
    at = datetime.now(UTC)
    with session(engine) as db:
        db.execute(delete(ConsoleSession).where(col(ConsoleSession.expires_at) <= at))
        db.add(
            ConsoleSession(
                token_hash=_digest(token),
                user=user,
                csrf_token=secrets.token_urlsafe(32),
                created_at=at,
                expires_at=at + LIFETIME,
            )
        )
    return token


def find(engine: Engine, token: str | None) -> Session | None:
    """The live session of this cookie token, or None (unknown, ended, expired, or its
    user disabled)."""
    if not token:
        return None
    with session(engine) as db:
        row = db.get(ConsoleSession, _digest(token))
        if row is None or row.expires_at <= datetime.now(UTC):
            return None
        user = db.get(ConsoleUser, row.user)
        if user is None or user.disabled:
            return None
        return Session(
            Principal(user.name, Role(user.role)), row.csrf_token, user.must_change_password
        )


def end(engine: Engine, token: str | None) -> None:
    if token:
        with session(engine) as db:
            db.execute(
                delete(ConsoleSession).where(col(ConsoleSession.token_hash) == _digest(token))
            )


@dataclass(frozen=True)
class ConsoleSessions:
    """A rollout API authenticator (hub.rollouts.auth.Authenticator): a console session's
    token sent as `Authorization: Bearer` acts with its user's role. Only as a header, never
    from the cookie, so another site cannot make a browser call the API (no CSRF)."""

    engine: Engine

    def authenticate(self, bearer: str) -> Principal | None:
        found = find(self.engine, bearer)
        return None if found is None or found.must_change_password else found.principal


def cookie_settings() -> dict[str, object]:
    return {
        "key": COOKIE,
        "httponly": True,
        "secure": True,
        "samesite": "strict",
        "path": "/",
        "max_age": int(LIFETIME.total_seconds()),
    }
