"""Console accounts: roles, argon2 password hashes, and lockout after failed logins.

Roles are the rollout API's (viewer, operator, approver, admin), so a console session and an
API token with the same role may do the same things. A name that does not exist costs the
same argon2 work as a wrong password, so timing does not tell which names exist.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from hub.console.models import ConsoleSession, ConsoleUser
from hub.db import session
from hub.rollouts.auth import Role

MAX_FAILURES = 5  # consecutive wrong passwords before the account locks
LOCKOUT = timedelta(minutes=15)
MIN_PASSWORD_CHARS = 12
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class AccountError(ValueError):
    """A refused account change; the message says what to do."""


@dataclass(frozen=True)
class LoginResult:
    user: ConsoleUser | None
    problem: str | None  # shown to the operator when user is None


def _now() -> datetime:
    return datetime.now(UTC)


def new_password() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, 120 bits


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")


def add_user(engine: Engine, name: str, role: Role, password: str | None = None) -> str:
    """Create `name`; returns its password (a new one-time password when none is given,
    which the user must change at the first login)."""
    if not NAME.match(name):
        raise AccountError(
            f"{name!r} is not a user name: lower-case letters, digits, '.', '_', '-' (max 64)"
        )
    one_time = password is None
    password = new_password() if password is None else password
    _check_password(password)
    with session(engine) as db:
        if db.get(ConsoleUser, name) is not None:
            raise AccountError(f"user {name} exists: `edge-hub user passwd {name}` resets it")
        db.add(
            ConsoleUser(
                name=name,
                role=str(role),
                password_hash=_hasher.hash(password),
                must_change_password=one_time,
                created_at=_now(),
            )
        )
    return password


def _user(db: Session, name: str) -> ConsoleUser:
    user = db.get(ConsoleUser, name)
    if user is None:
        raise AccountError(f"no user {name}: `edge-hub user list` shows them")
    return user


def _end_sessions(db: Session, name: str) -> None:
    for old in db.exec(select(ConsoleSession).where(col(ConsoleSession.user) == name)).all():
        db.delete(old)


def set_password(engine: Engine, name: str, password: str | None = None) -> str:
    """A new password (one-time when none is given); unlocks the account and ends its
    sessions."""
    one_time = password is None
    password = new_password() if password is None else password
    _check_password(password)
    with session(engine) as db:
        user = _user(db, name)
        user.password_hash = _hasher.hash(password)
        user.must_change_password = one_time
        user.failed_logins = 0
        user.locked_until = None
        _end_sessions(db, name)
    return password


def set_role(engine: Engine, name: str, role: Role) -> None:
    with session(engine) as db:
        _user(db, name).role = str(role)
        _end_sessions(db, name)  # a session keeps no stale role


def set_disabled(engine: Engine, name: str, disabled: bool = True) -> None:
    with session(engine) as db:
        _user(db, name).disabled = disabled
        if disabled:
            _end_sessions(db, name)


def list_users(engine: Engine) -> list[ConsoleUser]:
    with session(engine) as db:
        return list(db.exec(select(ConsoleUser).order_by(col(ConsoleUser.name))).all())


def has_users(engine: Engine) -> bool:
    with session(engine) as db:
        return db.exec(select(ConsoleUser.name).limit(1)).first() is not None


def check_login(engine: Engine, name: str, password: str) -> LoginResult:
    """The user when `password` is theirs and the account may log in. Wrong passwords count;
    MAX_FAILURES in a row lock the account for LOCKOUT (even the right password is refused
    then, so guessing on gains nothing)."""
    refused = LoginResult(None, "wrong user name or password")
    at = _now()
    with session(engine) as db:
        user = db.get(ConsoleUser, name)
        if user is None:
            _verify(_DUMMY_HASH, password)
            return refused
        if user.locked_until is not None and user.locked_until > at:
            _verify(_DUMMY_HASH, password)
            minutes = max(1, round((user.locked_until - at).total_seconds() / 60))
            return LoginResult(
                None,
                f"too many failed logins: this account is locked for {minutes} more minute(s); "
                "an admin can unlock it with `edge-hub user passwd NAME`",
            )
        if not _verify(user.password_hash, password):
            user.failed_logins += 1
            if user.failed_logins >= MAX_FAILURES:
                user.locked_until = at + LOCKOUT
                user.failed_logins = 0
            return refused
        if user.disabled:
            return LoginResult(None, "this account is disabled; ask an admin")
        user.failed_logins = 0
        user.locked_until = None
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = _hasher.hash(password)
        return LoginResult(user, None)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


FIRST_ADMIN = "admin"


def ensure_first_admin(engine: Engine) -> str | None:
    """At set-up (no user yet): create `admin` and return its one-time password, to be shown
    once; None when users exist."""
    if has_users(engine):
        return None
    try:
        return add_user(engine, FIRST_ADMIN, Role.ADMIN)
    except AccountError:
        return None  # another process made it first
