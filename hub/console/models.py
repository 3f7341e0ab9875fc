"""The console's tables, on the fleet's metadata (hub/migrations/versions/0007 creates them).

console_users     operators: name, role, argon2 password hash, disabled, failed logins and
                  the lockout they led to
console_sessions  server-side sessions: only the SHA-256 of the cookie's token is stored,
                  with the session's CSRF token and when it ends
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, String
from sqlmodel import Field

from hub.fleet.models import ID_CHARS, FleetTable, UtcDateTime


class ConsoleUser(FleetTable, table=True):
    __tablename__ = "console_users"

    name: str = Field(sa_column=Column(String(ID_CHARS), primary_key=True))
    role: str = Field(max_length=16)
    password_hash: str = Field(max_length=256)
    disabled: bool = False
    must_change_password: bool = False  # a one-time password printed at set-up
    failed_logins: int = 0  # since the last good one
    locked_until: datetime | None = Field(default=None, sa_column=Column(UtcDateTime()))
    created_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class ConsoleSession(FleetTable, table=True):
    __tablename__ = "console_sessions"

    token_hash: str = Field(sa_column=Column(String(64), primary_key=True))
    user: str = Field(
        sa_column=Column(
            String(ID_CHARS),
            ForeignKey("console_users.name", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False, index=True))
