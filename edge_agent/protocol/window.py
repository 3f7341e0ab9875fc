"""Maintenance windows: when a device may activate a new release.

A window is a cron expression for when it opens (five fields: minute hour day month
day-of-week), how long it stays open, and the time zone the expression is read in. It
travels inside the signed desired state, so a device obeys it with no hub to ask: it
downloads at any time and activates only while its window is open.

The cron expression is read by APScheduler's CronTrigger, which the agent already depends
on (no new package on the device). Its day-of-week numbers are not cron's (0 is Monday in
APScheduler, Sunday in cron), so the day of week must be written with names (mon-fri, sun):
a digit there would silently pick the wrong day, and is refused.

Pure computation, no I/O beyond the time zone database.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from edge_agent.protocol.messages import Wire

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

# A week: a longer window is no window at all.
MAX_DURATION_MINUTES = 7 * 24 * 60
# How far ahead a window must open at least once; a cron that fires less often (30 February,
# or a single year long past) is refused as "never opens". Covers 29 February.
OPENS_WITHIN = timedelta(days=5 * 366)
_DIGIT = re.compile(r"\d")


class WindowError(ValueError):
    """A window that cannot be used; the message names the field and what to write."""


def _trigger(cron: str, timezone: str) -> CronTrigger:
    from apscheduler.triggers.cron import CronTrigger

    fields = cron.split()
    if len(fields) != 5:
        raise WindowError(
            f"window cron {cron!r} must have five fields: minute hour day month day-of-week"
        )
    if _DIGIT.search(fields[4]):
        raise WindowError(
            f"window cron {cron!r}: write the day of week with names (mon-fri, sun), not "
            "digits: cron dialects number the days differently"
        )
    try:
        return CronTrigger.from_crontab(cron, timezone=ZoneInfo(timezone))
    except ValueError as exc:
        raise WindowError(f"window cron {cron!r} is not valid: {exc}") from None


class MaintenanceWindow(Wire):
    cron: str = Field(max_length=200)  # when the window opens, read in `timezone`
    duration_minutes: int = Field(ge=1, le=MAX_DURATION_MINUTES)
    timezone: str = Field(default="UTC", max_length=64)  # an IANA name: Europe/Berlin

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"time zone {value!r} is unknown: use an IANA name such as Europe/Berlin or UTC"
            ) from None
        return value

    @model_validator(mode="after")
    def _parsable(self) -> MaintenanceWindow:
        _trigger(self.cron, self.timezone)  # WindowError is a ValueError: pydantic reports it
        return self

    @property
    def duration(self) -> timedelta:
        return timedelta(minutes=self.duration_minutes)

    def _next_start(self, at_or_after: datetime) -> datetime | None:
        # CronTrigger returns the first fire time >= `now`, None when there is none.
        fire = _trigger(self.cron, self.timezone).get_next_fire_time(None, at_or_after)
        return None if fire is None else fire.astimezone(UTC)

    def open_until(self, now: datetime) -> datetime | None:
        """When the window that is open at `now` closes; None while it is closed."""
        # Open from each start (inclusive) for `duration` (exclusive).
        start = self._next_start(now - self.duration + timedelta(microseconds=1))
        if start is None or start > now:
            return None
        end = start + self.duration
        # A later start before `now` extends the opening (overlapping openings are one).
        following = self._next_start(start + timedelta(seconds=1))
        while following is not None and following <= now:
            end = following + self.duration
            following = self._next_start(following + timedelta(seconds=1))
        return end

    def is_open(self, now: datetime) -> bool:
        return self.open_until(now) is not None

    def next_open(self, now: datetime, *, within: timedelta = OPENS_WITHIN) -> datetime | None:
        """`now` when the window is open, else when it next opens; None when it does not
        open within `within`."""
        if now.utcoffset() is None:
            raise ValueError("now must carry a time zone")
        if self.is_open(now):
            return now
        start = self._next_start(now)
        return start if start is not None and start - now <= within else None


def check_opens(window: MaintenanceWindow, now: datetime) -> datetime:
    """When `window` next opens; WindowError when it never does (a release could never be
    activated under it)."""
    opens = window.next_open(now)
    if opens is None:
        raise WindowError(
            f"window cron {window.cron!r} ({window.timezone}) never opens within "
            f"{OPENS_WITHIN.days} days: devices under it could never activate a release; "
            "fix the cron expression"
        )
    return opens
