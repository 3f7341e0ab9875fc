"""The audit log as the console filters it, and a rollout's charts: error rate and latency of
the new release against the one it replaces, from the k-anonymous telemetry only (a
suppressed hour is drawn as a gap and listed as suppressed, never filled in)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import col, select

from hub.db import session
from hub.rollouts.models import AuditEntry
from hub.telemetry.query import release_health


@dataclass(frozen=True)
class AuditFilter:
    actor: str = ""
    action: str = ""
    object: str = ""
    since: str = ""  # ISO date or date-time, UTC unless it names a zone
    until: str = ""


def _moment(text: str, name: str) -> datetime | None:
    if not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{name}: {text!r} is not a date (2026-11-28 or 2026-11-28T09:30)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def audit(engine: Engine, chosen: AuditFilter, limit: int = 500) -> list[AuditEntry]:
    """Newest first."""
    query = select(AuditEntry).order_by(col(AuditEntry.id).desc())
    if chosen.actor:
        query = query.where(col(AuditEntry.actor) == chosen.actor)
    if chosen.action:
        query = query.where(col(AuditEntry.action) == chosen.action)
    if chosen.object:
        query = query.where(col(AuditEntry.object) == chosen.object)
    since, until = _moment(chosen.since, "since"), _moment(chosen.until, "until")
    if since is not None:
        query = query.where(col(AuditEntry.at) >= since)
    if until is not None:
        query = query.where(col(AuditEntry.at) < until)
    with session(engine) as db:
        return list(db.exec(query.limit(limit)).all())


def rollout_charts(engine: Engine, shown: dict[str, Any], k: int) -> dict[str, Any]:
    """Hourly error rate and TTFT p90 (ms) of the rollout's release and its baseline from the
    hour before it was created: {"hours": [...], "series": {label: {"error_rate": [...],
    "ttft_p90": [...]}}, "suppressed": [labels of hours hidden]}."""
    # From the hour before the rollout: the old release's recent health is the yardstick.
    since = datetime.fromisoformat(shown["created_at"]) - timedelta(hours=1)
    versions = [("new " + shown["version"], shown["version"])]
    if shown.get("baseline_version"):
        versions.append(("old " + shown["baseline_version"], shown["baseline_version"]))
    cells = {
        label: release_health(engine, shown["model"], version, since=since, k=k)
        for label, version in versions
    }
    hours = sorted({c.start for found in cells.values() for c in found})
    series: dict[str, dict[str, list[float | None]]] = {}
    suppressed: list[str] = []
    for label, found in cells.items():
        by_hour = {c.start: c for c in found}
        rates: list[float | None] = []
        ttft: list[float | None] = []
        for hour in hours:
            cell = by_hour.get(hour)
            metrics = cell.metrics if cell is not None else None
            if cell is not None and metrics is None:
                suppressed.append(f"{label} {hour:%Y-%m-%d %H:00} UTC")
            rates.append(metrics.error_rate if metrics else None)
            p90 = metrics.ttft.p90 if metrics else None
            ttft.append(p90 * 1000 if p90 is not None else None)  # seconds -> ms
        series[label] = {"error_rate": rates, "ttft_p90": ttft}
    return {
        "hours": [h.timestamp() for h in hours],
        "series": series,
        "suppressed": suppressed,
    }
