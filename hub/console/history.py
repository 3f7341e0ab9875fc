"""The audit log as the console filters it, and a rollout's charts: error rate and latency of
the new release against the one it replaces, from the k-anonymous telemetry only (a
suppressed hour is drawn as a gap and listed as suppressed, never filled in)."""

from __future__ import annotations

from collections.abc import Iterator
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


PAGE_ROWS = 50
EXPORT_BATCH_ROWS = 1000


@dataclass(frozen=True)
class AuditPage:
    """One page of the filtered log, newest first, and the cursors to its neighbours: the
    id to page on from (older: ids below `older_than`; newer: ids above `newer_than`), None
    where there is nothing more that way."""

    rows: list[AuditEntry]
    older_than: int | None
    newer_than: int | None


def _filtered(chosen: AuditFilter) -> Any:
    query = select(AuditEntry)
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
    return query


def audit_page(
    engine: Engine,
    chosen: AuditFilter,
    before: int | None = None,
    after: int | None = None,
    rows: int = PAGE_ROWS,
) -> AuditPage:
    """The page of entries older than id `before`, or newer than id `after` (the newest
    page without either). Keyset paging on the primary key: page 1,000 costs what page 1
    does, and an entry written meanwhile shifts no page. One query: a row past the page
    says whether there is more that way."""
    if before is not None and after is not None:
        raise ValueError("page with before or after, not both")
    query = _filtered(chosen)
    if after is not None:
        query = query.where(col(AuditEntry.id) > after).order_by(col(AuditEntry.id).asc())
    else:
        if before is not None:
            query = query.where(col(AuditEntry.id) < before)
        query = query.order_by(col(AuditEntry.id).desc())
    with session(engine) as db:
        found: list[AuditEntry] = list(db.exec(query.limit(rows + 1)).all())
    more = len(found) > rows
    found = found[:rows]
    if after is not None:
        found.reverse()  # read oldest first to find the page; shown newest first
    if not found:  # past either end: a link back to where entries are
        return AuditPage(
            [],
            None if after is None else after + 1,
            None if before is None else before - 1,
        )
    first, last = found[0].id, found[-1].id
    # Older entries exist when this page was cut short going back, or when it came from
    # `after` (the cursor's own entry is older); newer ones likewise.
    older = last if (more if after is None else True) else None
    newer = first if (more if after is not None else before is not None) else None
    return AuditPage(found, older, newer)


def audit_export(engine: Engine, chosen: AuditFilter) -> Iterator[AuditEntry]:
    """Every entry of the filtered log, newest first, read EXPORT_BATCH_ROWS at a time (on
    the same keyset as the pages), so an export of the whole log holds one batch in memory
    and no long-lived transaction. A bad filter raises ValueError here, before any row."""
    _filtered(chosen)

    def batches() -> Iterator[AuditEntry]:
        before: int | None = None
        while True:
            page = audit_page(engine, chosen, before=before, rows=EXPORT_BATCH_ROWS)
            yield from page.rows
            if page.older_than is None:
                return
            before = page.older_than

    return batches()


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
