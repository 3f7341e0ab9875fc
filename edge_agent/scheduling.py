"""The one way this project makes an apscheduler BackgroundScheduler for its timed jobs.

Every job is coalesced, one instance at most, with no misfire limit: a slow run never piles
up behind itself, and a run missed while the machine slept happens once when it wakes.
Times are UTC. A job that raises is logged by apscheduler and runs again at its next time.
"""

from __future__ import annotations

from datetime import UTC

from apscheduler.schedulers.background import BackgroundScheduler

JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


def new_scheduler() -> BackgroundScheduler:
    """A scheduler not yet started (call .start(), later .shutdown())."""
    return BackgroundScheduler(timezone=UTC, job_defaults=dict(JOB_DEFAULTS))
