"""The audit log: every rollout transition and operator action, with who, when and why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from hub.db import session
from hub.rollouts.models import AuditEntry

HUB_ACTOR = "hub"  # transitions the scheduler makes by itself


def record(
    db: Session,
    actor: str,
    action: str,
    obj: str,
    *,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        at=at or datetime.now(UTC),
        actor=actor,
        action=action,
        object=obj,
        reason=reason,
        details=details or {},
    )
    db.add(entry)
    return entry


def entries(engine: Engine, obj: str | None = None, limit: int = 1000) -> list[AuditEntry]:
    """Oldest first."""
    with session(engine) as db:
        query = select(AuditEntry).order_by(col(AuditEntry.id))
        if obj is not None:
            query = query.where(col(AuditEntry.object) == obj)
        return list(db.exec(query.limit(limit)).all())
