"""The daily summary of telemetry: closed UTC days rolled up into one row per release and
day (TELEMETRY_DAILY), so a year of day cells is read from 365 rows a release instead of
aggregated from every report. release_health reads it for the days it holds fresh and the
raw reports for the rest, and applies k-anonymity to the summarised cells exactly as to raw
ones: the summary stores the day's distinct pseudonym count, never a sum of smaller counts.

Freshness, with two writers (the roll-up job, ingest of a late report):
- `roll_up_day` marks its day fresh first, then replaces the day's rows, in one
  transaction. Marking first takes the marker's row lock (PostgreSQL) or the write lock
  (SQLite) before the day's reports are read.
- Ingest marks a closed day stale in the transaction that stores a report for it
  (`mark_stale`): its upsert waits for a roll-up of that day in progress and lands after it,
  or lands first and the roll-up then reads the report. Either way a summary never stays
  fresh without a report it lacks.
- The job rolls a day only ROLL_AFTER_SECONDS after it ended; ingest marks a day stale from
  the moment it ended. A report for the still open day that is stored unmarked therefore
  has an hour to commit before its day can be rolled.
Rolling a day again is harmless (its rows are replaced): the job is idempotent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, Engine, Insert, Table, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from hub.telemetry.models import TELEMETRY, TELEMETRY_DAILY, TELEMETRY_DAYS
from hub.telemetry.query import Bucket, aggregate

__all__ = ["ROLL_AFTER_SECONDS", "closed_days", "mark_stale", "roll_up", "roll_up_day"]

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400
ROLL_AFTER_SECONDS = 3_600  # the late reports of a day that just ended come in first


def _upsert(connection: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    if connection.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise ValueError(
        f"the telemetry summary supports SQLite and PostgreSQL, not {connection.dialect.name}"
    )


def _set_fresh(connection: Connection, days: list[int], fresh: bool) -> None:
    statement = _upsert(connection, TELEMETRY_DAYS)
    statement = statement.on_conflict_do_update(
        index_elements=[TELEMETRY_DAYS.c.day], set_={"fresh": statement.excluded.fresh}
    )
    # In day order: two writers never take each other's markers in opposite orders.
    connection.execute(statement, [{"day": day, "fresh": fresh} for day in sorted(days)])


def mark_stale(connection: Connection, window_hours: Iterable[int], now: datetime) -> None:
    """Within the caller's transaction, which stores reports of these window hours: the
    closed days among them are no longer summarised completely."""
    today = math.floor(now.timestamp() / DAY_SECONDS)
    closed = {hour // 24 for hour in window_hours if hour // 24 < today}
    if closed:
        _set_fresh(connection, sorted(closed), fresh=False)


def roll_up_day(engine: Engine, day: int) -> int:
    """Summarise `day` (days since the epoch, UTC) again: its rows replaced, the day fresh.
    Returns how many release rows it holds."""
    hours = TELEMETRY.c.window_hour
    in_day = (hours >= day * 24) & (hours < (day + 1) * 24)
    cells = aggregate(Bucket.DAY, [TELEMETRY.c.model.is_not(None)], in_day, by_model=True)
    columns = [c.name for c in cells.selected_columns]
    names = ["day" if name == "cell" else name for name in columns]
    with engine.begin() as connection:
        _set_fresh(connection, [day], fresh=True)  # first: see the module's docstring
        connection.execute(delete(TELEMETRY_DAILY).where(TELEMETRY_DAILY.c.day == day))
        filled: Insert = insert(TELEMETRY_DAILY).from_select(names, cells)
        return int(connection.execute(filled).rowcount)


def closed_days(engine: Engine, now: datetime) -> list[int]:
    """The days that have ended ROLL_AFTER_SECONDS ago, from the first report's day on,
    that the summary does not hold fresh: what the job rolls up next."""
    last = math.floor((now.timestamp() - ROLL_AFTER_SECONDS) / DAY_SECONDS) - 1
    with engine.connect() as connection:
        first_hour = connection.execute(select(func.min(TELEMETRY.c.window_hour))).scalar()
        if first_hour is None:
            return []
        fresh = set(
            connection.execute(select(TELEMETRY_DAYS.c.day).where(TELEMETRY_DAYS.c.fresh)).scalars()
        )
    return [day for day in range(int(first_hour) // 24, last + 1) if day not in fresh]


def roll_up(engine: Engine, now: datetime) -> list[int]:
    """The scheduled job: summarise every closed day not yet (or no longer) fresh, one
    transaction a day. A failure is logged and the next run tries again."""
    done = []
    for day in closed_days(engine, now):
        try:
            roll_up_day(engine, day)
        except SQLAlchemyError as exc:
            log.error("rolling up telemetry of day %d failed: %s", day, exc)
            break
        done.append(day)
    if done:
        log.info("telemetry summary: rolled up %d day(s)", len(done))
    return done
