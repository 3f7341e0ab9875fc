"""The daily summary gives the numbers the raw reports give: every day cell, shown or
suppressed, on SQLite and PostgreSQL; it is read where it is fresh, a late report reopens
its day, and rolling up again changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, update

from edge_agent.protocol.messages import Envelope
from hub.ingest.store import store
from hub.telemetry import rollup
from hub.telemetry.models import TELEMETRY, TELEMETRY_DAILY, TELEMETRY_DAYS
from hub.telemetry.query import release_health
from tests.hub_telemetry.helpers import T0, busy, report

DAY0 = int(T0.timestamp()) // 86_400
NOW = T0 + timedelta(days=2, hours=12)  # days 0 and 1 closed, day 2 open
AGENT: dict[str, Any] = {"model": None, "version": None}


def _store_at(engine: Engine, envelopes: list[Envelope], received_at: datetime) -> None:
    with engine.begin() as connection:
        store(connection, envelopes, received_at)


def _fill(engine: Engine) -> None:
    """Day 0: 1.0.0 from 5 devices, each in its own hour (every hour cell would be
    suppressed, the day is not), one of them twice; 1.2.0 from 3 (suppressed); crashes
    in the agents' reports. Day 1: 6 devices over several hours, varying noise. Day 2 (open):
    5 devices. Another model beside them."""
    day0 = [busy(d, hour=d) for d in range(5)] + [busy(0, hour=7, requests=9)]
    day0 += [busy(d, hour=d, version="1.2.0", errors={"timeout": 5}) for d in range(3)]
    day0 += [
        report(0, hour=0, crashes=2, restarts=2, **AGENT),
        report(9, hour=3, crashes=4, **AGENT),
    ]
    day1 = [busy(d, hour=24 + h, dp_epsilon=1.0 + d) for d in range(6) for h in (d, d + 6)]
    day1 += [report(2, hour=24 + 2, restarts=1, **AGENT)]
    day2 = [busy(d, hour=48 + d) for d in range(5)]
    other = [busy(d, hour=h, model="other") for d in range(5) for h in (1, 30)]
    _store_at(engine, day0 + day1 + day2 + other, NOW)


def _cells(engine: Engine, **query: Any) -> list[dict[str, Any]]:
    return [c.to_json() for c in release_health(engine, "chat", bucket="day", **query)]


QUERIES: list[dict[str, Any]] = [
    {},
    {"version": "1.0.0"},
    {"version": "1.2.0"},
    {"since": T0 + timedelta(days=1, hours=5)},  # rounded down to day 1
    {"k": 6},
    {"k": 2, "since": T0},
]


@contextmanager
def _raw_only(engine: Engine) -> Iterator[None]:
    """While inside: the summary holds no day fresh, so every cell comes from raw rows."""
    with engine.connect() as connection:
        fresh = list(
            connection.execute(select(TELEMETRY_DAYS.c.day).where(TELEMETRY_DAYS.c.fresh)).scalars()
        )
    with engine.begin() as connection:
        connection.execute(update(TELEMETRY_DAYS).values(fresh=False))
    try:
        yield
    finally:
        with engine.begin() as connection:
            for day in fresh:
                connection.execute(
                    update(TELEMETRY_DAYS).where(TELEMETRY_DAYS.c.day == day).values(fresh=True)
                )


def _summary(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        query = select(TELEMETRY_DAILY).order_by(*TELEMETRY_DAILY.primary_key.columns)
        return [tuple(row) for row in connection.execute(query)]


def test_the_summary_gives_the_numbers_of_the_raw_reports(engine: Engine) -> None:
    _fill(engine)
    raw = [_cells(engine, **query) for query in QUERIES]
    suppressed = [c["suppressed"] for c in raw[0]]
    assert suppressed == [False, False, False, True]  # 1.0.0 days 0-2, 1.2.0 day 0
    assert rollup.roll_up(engine, NOW) == [DAY0, DAY0 + 1]
    assert {row[:3] for row in _summary(engine)} == {
        ("chat", "1.0.0", DAY0),
        ("chat", "1.2.0", DAY0),
        ("chat", "1.0.0", DAY0 + 1),
        ("other", "1.0.0", DAY0),
        ("other", "1.0.0", DAY0 + 1),
    }
    assert [_cells(engine, **query) for query in QUERIES] == raw
    # The closed days are read from the summary: without their raw rows, the same cells.
    with engine.begin() as connection:
        connection.execute(delete(TELEMETRY).where(TELEMETRY.c.window_hour < (DAY0 + 2) * 24))
    assert [_cells(engine, **query) for query in QUERIES] == raw


def test_rolling_up_again_changes_nothing(engine: Engine) -> None:
    _fill(engine)
    rollup.roll_up(engine, NOW)
    rolled = _summary(engine)
    assert rollup.roll_up(engine, NOW) == []  # nothing left to do
    rollup.roll_up_day(engine, DAY0)
    rollup.roll_up_day(engine, DAY0 + 1)
    assert _summary(engine) == rolled


def test_a_late_report_reopens_its_day_until_the_job_rolls_it_again(engine: Engine) -> None:
    _fill(engine)
    rollup.roll_up(engine, NOW)
    # A device that was offline sends day 0's report now; with it, 1.2.0 has 4 devices
    # that day, so with k = 4 its cell is shown.
    _store_at(engine, [busy(3, hour=5, version="1.2.0")], NOW)
    # A report for the open day does not touch the summary.
    _store_at(engine, [busy(7, hour=50)], NOW)
    with engine.connect() as connection:
        days = dict(connection.execute(select(TELEMETRY_DAYS.c.day, TELEMETRY_DAYS.c.fresh)).all())
    assert days == {DAY0: False, DAY0 + 1: True}
    late = _cells(engine, version="1.2.0", k=4)
    assert [c["suppressed"] for c in late] == [False]
    assert late[0]["metrics"]["devices"] == 4
    with _raw_only(engine):
        raw = [_cells(engine, **query) for query in QUERIES]
    assert [_cells(engine, **query) for query in QUERIES] == raw
    assert rollup.roll_up(engine, NOW) == [DAY0]
    assert [_cells(engine, **query) for query in QUERIES] == raw


def test_only_closed_days_are_rolled_up(engine: Engine) -> None:
    _fill(engine)
    # Day 1 ended 30 minutes ago: its late reports may still come in.
    just_after = T0 + timedelta(days=2, minutes=30)
    assert rollup.closed_days(engine, just_after) == [DAY0]
    assert rollup.closed_days(engine, just_after + timedelta(hours=1)) == [DAY0, DAY0 + 1]
