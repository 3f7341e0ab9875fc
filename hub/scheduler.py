"""Background jobs of a serving hub: keep the online metadata fresh, and roll closed days
of telemetry up into the daily summary (hub.telemetry.rollup) every hour.

Timestamp metadata lives one day; the job re-signs it (and snapshot, and targets) once
within half its lifetime of expiry, so devices never see it expire while the hub runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from hub.registry.errors import RegistryError
from hub.registry.repository import ReleaseRepository
from hub.telemetry import rollup

log = logging.getLogger(__name__)

ROLLUP_INTERVAL_SECONDS = 3600  # a day closes once a day; the hourly run also catches late reports


def refresh_once(open_repository: Callable[[], ReleaseRepository]) -> list[str]:
    """One refresh, logged; errors are logged too, so the next run tries again."""
    try:
        resigned = open_repository().refresh()
    except RegistryError as exc:
        log.error("refreshing the release metadata failed: %s", exc)
        return []
    if resigned:
        log.info("re-signed %s metadata", ", ".join(resigned))
    else:
        log.debug("release metadata is fresh; nothing re-signed")
    return resigned


def add_refresh_job(
    scheduler: BackgroundScheduler,
    open_repository: Callable[[], ReleaseRepository],
    interval_seconds: int,
) -> None:
    """Run refresh_once at the scheduler's start and every `interval_seconds`."""
    scheduler.add_job(
        refresh_once,
        "interval",
        args=[open_repository],
        seconds=interval_seconds,
        next_run_time=datetime.now(UTC),
        id="refresh-metadata",
    )


def add_rollup_job(
    scheduler: BackgroundScheduler, engine: Engine, interval_seconds: int = ROLLUP_INTERVAL_SECONDS
) -> None:
    """Run rollup.roll_up at the scheduler's start and every `interval_seconds`."""
    scheduler.add_job(
        lambda: rollup.roll_up(engine, datetime.now(UTC)),
        "interval",
        seconds=interval_seconds,
        next_run_time=datetime.now(UTC),
        id="telemetry-rollup",
    )
