"""What the fleet pages show, each as a few aggregate queries (no query per device), so a page
costs the same at 10,000 devices as at 10."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, case, func, or_
from sqlmodel import col, select

from hub.db import session
from hub.fleet.models import DesiredRecord, Device, InstallEventRecord, ReportedModelState

ONLINE = timedelta(minutes=10)  # spoke this recently: online
STALE = timedelta(days=7)  # silent longer (or never seen): stale; in between: offline
PAGE_SIZE = 50


@dataclass(frozen=True)
class FleetFilter:
    query: str = ""  # part of the device id
    group: str = ""
    tag: str = ""  # key=value
    page: int = 1

    def tag_pair(self) -> tuple[str, str] | None:
        key, sep, value = self.tag.partition("=")
        return (key.strip(), value.strip()) if sep and key.strip() else None


def _filtered(query: Any, chosen: FleetFilter) -> Any:
    if chosen.query:
        query = query.where(col(Device.id).contains(chosen.query, autoescape=True))
    if chosen.group:
        query = query.where(col(Device.group) == chosen.group)
    pair = chosen.tag_pair()
    if pair is not None:
        query = query.where(Device.__table__.c.tags[pair[0]].as_string() == pair[1])  # type: ignore[attr-defined]
    return query


def liveness(now: datetime) -> Any:
    seen = col(Device.last_seen)
    return case(
        (col(Device.revoked_at).is_not(None), "revoked"),
        (seen >= now - ONLINE, "online"),
        (seen >= now - STALE, "offline"),
        else_="stale",
    )


def overview(engine: Engine, now: datetime, chosen: FleetFilter) -> dict[str, Any]:
    state = liveness(now)
    with session(engine) as db:
        counts = dict(db.exec(_filtered(select(state, func.count()).group_by(state), chosen)).all())
        versions = db.exec(
            select(
                ReportedModelState.model, ReportedModelState.active, func.count()
            ).group_by(col(ReportedModelState.model), col(ReportedModelState.active))
            .order_by(col(ReportedModelState.model), col(ReportedModelState.active))
        ).all()  # fmt: skip
        total = sum(counts.values())
        rows = db.exec(
            _filtered(select(Device, state), chosen)
            .order_by(col(Device.id))
            .offset((max(chosen.page, 1) - 1) * PAGE_SIZE)
            .limit(PAGE_SIZE)
        ).all()
        attention = db.exec(
            select(ReportedModelState)
            .where(
                or_(
                    col(ReportedModelState.last_result).in_(["failed", "rolled_back"]),
                    col(ReportedModelState.phase) == "rolling_back",
                )
            )
            .order_by(col(ReportedModelState.updated_at).desc())
            .limit(20)
        ).all()
        revoked = db.exec(
            select(Device.id)
            .where(col(Device.revoked_at).is_not(None))
            .order_by(col(Device.id))
            .limit(20)
        ).all()
        groups = db.exec(
            select(Device.group).distinct().where(col(Device.group).is_not(None))
        ).all()
    by_model: dict[str, list[tuple[str, int]]] = {}
    for model, version, count in versions:
        by_model.setdefault(model, []).append((version or "none", count))
    return {
        "counts": {k: counts.get(k, 0) for k in ("online", "offline", "stale", "revoked")},
        "total": total,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "devices": [{"device": d, "state": s} for d, s in rows],
        "versions": by_model,
        "attention": attention,
        "revoked": revoked,
        "groups": sorted(g for g in groups if g),
    }


def device_page(engine: Engine, device_id: str, now: datetime) -> dict[str, Any] | None:
    with session(engine) as db:
        row = db.exec(select(Device, liveness(now)).where(col(Device.id) == device_id)).first()
        if row is None:
            return None
        reported = db.exec(
            select(ReportedModelState)
            .where(col(ReportedModelState.device_id) == device_id)
            .order_by(col(ReportedModelState.model))
        ).all()
        history = db.exec(
            select(InstallEventRecord)
            .where(col(InstallEventRecord.device_id) == device_id)
            .order_by(col(InstallEventRecord.at).desc())
            .limit(50)
        ).all()
        desired = db.get(DesiredRecord, device_id)
    return {
        "device": row[0],
        "state": row[1],
        "reported": reported,
        "history": history,
        "desired": desired,
    }
