"""The agent's periodic jobs on one apscheduler BackgroundScheduler.

    heartbeat      a Heartbeat (uptime, outbox depth, dropped telemetry) into the outbox
    outbox-flush   nudges the link's flusher (it also wakes on its own every second)
    update-check   a given callable: poll for new releases / desired state
    housekeeping   a given callable: the model store's garbage collection

Each job is coalesced with one instance at most: a slow update check never piles up.
A job that raises is logged by apscheduler and runs again at its next time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.background import BackgroundScheduler

from edge_agent.protocol import Envelope, Heartbeat
from edge_agent.scheduling import new_scheduler
from edge_agent.sync.link import enqueue
from edge_agent.sync.outbox import Outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobIntervals:
    heartbeat_seconds: float = 300.0
    flush_seconds: float = 5.0
    update_check_seconds: float = 3600.0
    housekeeping_seconds: float = 86_400.0


def heartbeat_job(
    outbox: Outbox,
    device_id: str,
    *,
    started_monotonic: float | None = None,
    nudge: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """A job that queues one Heartbeat for `device_id` (state: never dropped)."""
    started = time.monotonic() if started_monotonic is None else started_monotonic

    def beat() -> None:
        heartbeat = Heartbeat(
            uptime_seconds=int(time.monotonic() - started),
            outbox_depth=outbox.depth(),
            telemetry_dropped=outbox.dropped_telemetry(),
        )
        enqueue(outbox, Envelope.of(heartbeat, device_id=device_id))
        if nudge is not None:
            nudge()

    return beat


def build_scheduler(
    intervals: JobIntervals,
    *,
    heartbeat: Callable[[], None],
    flush: Callable[[], None],
    update_check: Callable[[], None] | None = None,
    housekeeping: Callable[[], None] | None = None,
) -> BackgroundScheduler:
    """A scheduler with the jobs added, not yet started (call .start(), .shutdown())."""
    scheduler = new_scheduler()
    jobs: list[tuple[str, Callable[[], None] | None, float]] = [
        ("heartbeat", heartbeat, intervals.heartbeat_seconds),
        ("outbox-flush", flush, intervals.flush_seconds),
        ("update-check", update_check, intervals.update_check_seconds),
        ("housekeeping", housekeeping, intervals.housekeeping_seconds),
    ]
    for job_id, func, seconds in jobs:
        if func is None:
            continue
        if seconds <= 0:
            raise ValueError(f"{job_id}: interval must be positive, got {seconds}")
        scheduler.add_job(func, "interval", seconds=seconds, id=job_id, name=job_id)
    return scheduler
