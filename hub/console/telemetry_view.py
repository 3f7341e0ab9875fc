"""The telemetry page: each release's health over time, from the k-anonymous aggregates of
hub.telemetry.query only. A cell behind fewer than k devices is suppressed: it is listed as
suppressed and drawn as a gap, never filled in or counted."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from hub.telemetry.models import TELEMETRY
from hub.telemetry.query import Bucket, HealthCell, release_health

DAYS = (1, 7, 30, 365)
HOURLY_UP_TO_DAYS = 7  # longer spans are drawn per day, from the daily summary
TABLE_ROWS = 48  # the newest cells in the table under the charts
CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class TelemetryFilter:
    model: str = ""
    days: int = 7

    @property
    def bucket(self) -> Bucket:
        return Bucket.HOUR if self.days <= HOURLY_UP_TO_DAYS else Bucket.DAY


def models_with_telemetry(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        found = connection.execute(select(TELEMETRY.c.model).distinct()).scalars().all()
    return sorted(m for m in found if m)


def _label(cell: HealthCell) -> str:
    return f"{cell.start:%Y-%m-%d %H:00} UTC"


class HealthCache:
    """The page's cells for CACHE_SECONDS per (model, span, k): spans over a week are read
    from the daily summary (hub.telemetry.rollup), but a week of hourly cells is still
    aggregated from the reports, and cells change only as reports arrive, so a view at most
    a minute old is shown again instead of aggregated again."""

    def __init__(self, seconds: float = CACHE_SECONDS, entries: int = 32) -> None:
        self.seconds, self.entries = seconds, entries
        self._found: dict[tuple[str, int, int], tuple[float, list[HealthCell]]] = {}
        self._models: tuple[float, list[str]] | None = None
        self._lock = threading.Lock()

    def models(self, engine: Engine) -> list[str]:
        # DISTINCT walks the whole (model, version, window_hour) index: once a minute.
        known = self._models
        if known is not None and time.monotonic() - known[0] < self.seconds:
            return known[1]
        found = models_with_telemetry(engine)
        self._models = (time.monotonic(), found)
        return found

    def cells(
        self, engine: Engine, chosen: TelemetryFilter, now: datetime, k: int
    ) -> list[HealthCell]:
        key = (chosen.model, chosen.days, k)
        with self._lock:
            hit = self._found.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.seconds:
            return hit[1]
        since = now - timedelta(days=chosen.days)
        cells = release_health(engine, chosen.model, since=since, bucket=chosen.bucket, k=k)
        with self._lock:
            if len(self._found) >= self.entries:
                self._found.pop(min(self._found, key=lambda known: self._found[known][0]))
            self._found[key] = (time.monotonic(), cells)
        return cells


def health(
    engine: Engine,
    chosen: TelemetryFilter,
    now: datetime,
    k: int,
    cache: HealthCache | None = None,
) -> dict[str, Any]:
    """Charts' data in the shape console.js draws ({"hours", "series", "suppressed"}), a
    summary per release and the newest cells for the table."""
    if not chosen.model:
        return {"hours": [], "series": {}, "suppressed": [], "releases": [], "cells": []}
    if cache is not None:
        cells = cache.cells(engine, chosen, now, k)
    else:
        since = now - timedelta(days=chosen.days)
        cells = release_health(engine, chosen.model, since=since, bucket=chosen.bucket, k=k)
    starts = sorted({c.start for c in cells})
    by_version: dict[str, dict[datetime, HealthCell]] = {}
    for cell in cells:
        by_version.setdefault(cell.version, {})[cell.start] = cell
    series: dict[str, dict[str, list[float | None]]] = {}
    suppressed: list[str] = []
    summary: list[dict[str, Any]] = []
    for version, found in by_version.items():
        rates: list[float | None] = []
        ttft: list[float | None] = []
        speed: list[float | None] = []
        for start in starts:
            metrics = found[start].metrics if start in found else None
            rates.append(metrics.error_rate if metrics else None)
            p90 = metrics.ttft.p90 if metrics else None
            ttft.append(p90 * 1000 if p90 is not None else None)  # seconds -> ms
            speed.append(metrics.tokens_per_second if metrics else None)
        series[version] = {"error_rate": rates, "ttft_p90": ttft, "tokens_per_second": speed}
        hidden = [c for c in found.values() if c.suppressed]
        suppressed += [f"{version} {_label(c)}" for c in hidden]
        shown = [c.metrics for c in found.values() if c.metrics is not None]
        requests = sum(m.requests for m in shown)
        errors = sum(m.errors for m in shown)
        summary.append(
            {
                "version": version,
                "cells": len(found),
                "suppressed": len(hidden),
                "requests": requests,
                "error_rate": errors / requests if requests else None,
            }
        )
    newest = sorted(cells, key=lambda c: c.start, reverse=True)[:TABLE_ROWS]
    return {
        "step": chosen.bucket.hours * 3600,
        "hours": [s.timestamp() for s in starts],
        "series": series,
        "suppressed": suppressed,
        "releases": summary,
        "cells": newest,
    }
