"""The one query interface to telemetry: the health of model releases over time, shown only
where at least k devices stand behind the numbers.

`release_health` answers per (release, time bucket): error rate, latency percentiles from the
fixed histograms, tokens per second, the crash rate of the devices that ran the release, and
update outcomes. A cell backed by fewer than k distinct pseudonyms is suppressed: it says so
and carries no numbers, not even how many devices it has.

Cells are aligned UTC hours or days, and `since` is rounded down to a cell boundary, so two
queries can never differ by a slice of a cell (which could isolate fewer than k devices).
What k-anonymity per cell cannot stop is differencing across bucket sizes (a day minus its
shown hours); the devices' own coarsening and noise (`dp_epsilon`) are the answer to that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from packaging.version import Version
from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    Engine,
    RowMapping,
    Select,
    and_,
    distinct,
    func,
    or_,
    select,
    union_all,
)

from hub.telemetry.models import (
    COUNTERS,
    ERROR_COLUMNS,
    HISTOGRAMS,
    OUTCOME_COLUMNS,
    TELEMETRY,
    TELEMETRY_DAILY,
    TELEMETRY_DAYS,
    Histogram,
)

__all__ = [
    "DEFAULT_K",
    "MIN_K",
    "Bucket",
    "HealthCell",
    "HealthMetrics",
    "Percentiles",
    "TelemetryQueryError",
    "percentile",
    "release_health",
]

DEFAULT_K = 5
MIN_K = 2  # k = 1 would show one device's usage
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
_AGENT_COUNTERS = ("restarts", "crashes")  # only in the agent's report (model None)
_RELEASE_COUNTERS = tuple(name for name in COUNTERS if name not in _AGENT_COUNTERS)


class TelemetryQueryError(ValueError):
    """A query the telemetry interface will not answer (the message says why)."""


class Bucket(StrEnum):
    HOUR = "hour"
    DAY = "day"

    @property
    def hours(self) -> int:
        return 24 if self is Bucket.DAY else 1


@dataclass(frozen=True)
class Percentiles:
    """Percentiles of a histogram, in `unit`; None where it is empty. A percentile in the
    open last cell is that cell's lower edge: all the histogram knows is "at least"."""

    unit: str
    p50: float | None
    p90: float | None
    p99: float | None


@dataclass(frozen=True)
class HealthMetrics:
    # Distinct pseudonyms (>= k). Ingest stores a report only with the token of its
    # pseudonym, issued once per enrolled device and week: one device, one pseudonym.
    devices: int
    reports: int
    device_hours: float  # the windows these reports cover, added up
    requests: int
    tokens_in: int
    tokens_out: int
    errors: int
    error_rate: float | None  # errors per request; None without requests
    errors_by_class: dict[str, int]
    rejections: int  # requests refused because the queue was full
    ttft: Percentiles
    per_token: Percentiles
    tokens_per_second: float | None  # at the median per-token latency
    load: Percentiles
    peak_memory: Percentiles
    # Of the agents that served this release in the same windows (an agent-wide count).
    crashes: int
    restarts: int
    crashes_per_device_hour: float | None
    update_outcomes: dict[str, int]
    histograms: dict[str, list[int]] = field(repr=False)
    # The largest (weakest) differential-privacy epsilon among the reports; None: no noise.
    dp_epsilon: float | None


@dataclass(frozen=True)
class HealthCell:
    model: str
    version: str
    bucket: Bucket
    start: datetime  # UTC, aligned to the bucket
    k: int
    metrics: HealthMetrics | None  # None: suppressed (fewer than k devices)

    @property
    def suppressed(self) -> bool:
        return self.metrics is None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "bucket": str(self.bucket),
            "start": self.start.isoformat(),
            "k": self.k,
            "suppressed": self.suppressed,
        }
        if self.metrics is not None:
            data["metrics"] = asdict(self.metrics)
        return data


def percentile(counts: Sequence[int], edges: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a histogram whose cell i holds edges[i-1] <= v <
    edges[i] (from 0 in the first cell), interpolating linearly inside a cell."""
    if len(counts) != len(edges) + 1:
        raise ValueError(f"{len(counts)} cells do not fit {len(edges)} edges")
    if not 0 < q <= 1:
        raise ValueError(f"quantile {q} is not within (0, 1]")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            lower = float(edges[i - 1]) if i else 0.0
            if i == len(edges):
                return lower
            return lower + (float(edges[i]) - lower) * (rank - below) / count
        below += count
    return float(edges[-1])  # pragma: no cover (rank <= total)


def _percentiles(histogram: Histogram, counts: Sequence[int]) -> Percentiles:
    values = {name: percentile(counts, histogram.edges, q) for name, q in QUANTILES.items()}
    return Percentiles(unit=histogram.unit, **values)


def _check(k: int, since: datetime | None) -> None:
    if k < MIN_K:
        raise TelemetryQueryError(
            f"k = {k} would show fewer than {MIN_K} devices' usage: k must be at least {MIN_K}"
        )
    if since is not None and since.utcoffset() is None:
        raise TelemetryQueryError(f"since {since.isoformat()} must carry a time zone (UTC)")


def _first_hour(since: datetime, bucket: Bucket) -> int:
    """The first hour (since the epoch) of the cell that holds `since`."""
    hour = math.floor(since.timestamp() / 3600)
    return hour - hour % bucket.hours


def _summed_columns() -> list[str]:
    return [
        *_RELEASE_COUNTERS,
        *ERROR_COLUMNS.values(),
        *OUTCOME_COLUMNS.values(),
        *(name for histogram in HISTOGRAMS for name in histogram.columns),
    ]


def aggregate(
    bucket: Bucket,
    conditions: Sequence[ColumnElement[bool]],
    hours: ColumnElement[bool] | None,
    by_model: bool = False,
) -> Select[Any]:
    """The statement that adds up cells from the raw reports: per (version, cell), or per
    (model, version, cell) with `by_model`; the release rows that `conditions` keep, within
    `hours` (a condition on window_hour, applied to the agent's rows too). Its columns are
    what _cell reads, so the daily summary stores exactly what a raw day cell would show."""
    t = TELEMETRY
    # The agent's own report (restarts, crashes) of the same device and window: a crash is
    # counted against every release the device reported in that window.
    # (version too is None in every agent report: with it the index finds their hours.)
    agent_conditions: list[ColumnElement[bool]] = [t.c.model.is_(None), t.c.version.is_(None)]
    if hours is not None:
        # The same span on the agent's side: only those windows can join, and without it
        # every query would add up the agent reports of all time.
        agent_conditions.append(hours)
    agent = (
        select(
            t.c.pseudonym,
            t.c.window_start,
            *(func.sum(t.c[name]).label(name) for name in _AGENT_COUNTERS),
        )
        .where(*agent_conditions)
        .group_by(t.c.pseudonym, t.c.window_start)
        .subquery("agent")
    )
    summed = _summed_columns()
    # The cell is computed in a subquery and grouped on outside: grouping by an expression
    # with a bound parameter fails on PostgreSQL (the SELECT's copy is another parameter).
    rows = (
        select(
            t.c.model,
            t.c.version,
            t.c.pseudonym,
            t.c.window_seconds,
            t.c.dp_epsilon,
            (t.c.window_hour // bucket.hours).label("cell"),
            *(t.c[name] for name in summed),
            *(func.coalesce(agent.c[name], 0).label(name) for name in _AGENT_COUNTERS),
        )
        .select_from(
            t.outerjoin(
                agent,
                and_(agent.c.pseudonym == t.c.pseudonym, agent.c.window_start == t.c.window_start),
            )
        )
        .where(*conditions, *([] if hours is None else [hours]))
        .subquery("rows")
    )
    keys = [rows.c.model] if by_model else []
    return select(
        *keys,
        rows.c.version,
        rows.c.cell,
        func.count(distinct(rows.c.pseudonym)).label("devices"),
        func.count().label("reports"),
        func.sum(rows.c.window_seconds).label("seconds"),
        func.max(rows.c.dp_epsilon).label("dp_epsilon"),
        *(func.sum(rows.c[name]).label(name) for name in [*summed, *_AGENT_COUNTERS]),
    ).group_by(*keys, rows.c.version, rows.c.cell)


def _raw_hours(fresh: Sequence[int], first_day: int | None) -> ColumnElement[bool]:
    """window_hour within the days from `first_day` on that are not in `fresh` (sorted):
    the gaps between the summarised days, and everything after the last."""
    h = TELEMETRY.c.window_hour
    spans: list[ColumnElement[bool]] = []
    start = first_day  # the first day not yet covered; None: from the beginning
    for day in fresh:
        if start is None or day > start:
            lower = [] if start is None else [h >= start * 24]
            spans.append(and_(*lower, h < day * 24))
        start = day + 1
    spans.append(h >= start * 24 if start is not None else h.is_not(None))
    return or_(*spans)


def _day_cells(
    connection: Connection,
    model: str,
    version: str | None,
    first_day: int | None,
) -> CompoundSelect[Any]:
    """Day cells: the summary's rows for its fresh days, and the raw reports' day cells for
    every other day from `first_day` on. One query finds the fresh days first, so the raw
    part reads only the hours outside them."""
    days = TELEMETRY_DAYS
    known = select(days.c.day).where(days.c.fresh).order_by(days.c.day)
    if first_day is not None:
        known = known.where(days.c.day >= first_day)
    fresh = list(connection.execute(known).scalars())
    d = TELEMETRY_DAILY
    summarised = (
        select(
            d.c.version,
            d.c.day.label("cell"),
            d.c.devices,
            d.c.reports,
            d.c.seconds,
            d.c.dp_epsilon,
            *(d.c[name] for name in [*_summed_columns(), *_AGENT_COUNTERS]),
        )
        .join(days, and_(days.c.day == d.c.day, days.c.fresh))
        .where(d.c.model == model)
    )
    if version is not None:
        summarised = summarised.where(d.c.version == version)
    if first_day is not None:
        summarised = summarised.where(d.c.day >= first_day)
    t = TELEMETRY
    # The raw part is a few hours (today's, a reopened day's): found by the window_hour
    # index. `model || ''` keeps the planner off the (model, ...) index, which would walk
    # every report of the model's releases for a handful of hours.
    conditions = [t.c.model.concat("") == model]
    if version is not None:
        conditions.append(t.c.version == version)
    raw = aggregate(Bucket.DAY, conditions, _raw_hours(fresh, first_day))
    return union_all(summarised, raw)


def release_health(
    engine: Engine,
    model: str,
    version: str | None = None,
    since: datetime | None = None,
    bucket: Bucket | str = Bucket.HOUR,
    k: int = DEFAULT_K,
) -> list[HealthCell]:
    """Cells of `model` (one release, or each of its releases), oldest first per release,
    from the cell holding `since` on; those behind fewer than `k` devices suppressed.
    Day cells come from the daily summary for the days it holds fresh, from the raw
    reports for the rest (today, and a day a late report reopened): the same numbers."""
    try:
        bucket = Bucket(bucket)
    except ValueError:
        raise TelemetryQueryError(f"bucket {bucket!r}: choose hour or day") from None
    _check(k, since)
    t = TELEMETRY
    conditions = [t.c.model == model]
    if version is not None:
        conditions.append(t.c.version == version)
    first_hour = None if since is None else _first_hour(since, bucket)
    statement: Select[Any] | CompoundSelect[Any]
    with engine.connect() as connection:
        if bucket is Bucket.DAY:
            first_day = None if first_hour is None else first_hour // 24
            statement = _day_cells(connection, model, version, first_day)
        else:
            hours = None if first_hour is None else t.c.window_hour >= first_hour
            statement = aggregate(bucket, conditions, hours)
        results = connection.execute(statement).mappings().all()
    cells = [_cell(model, bucket, k, result) for result in results]
    return sorted(cells, key=lambda c: (Version(c.version), c.start))


def _cell(model: str, bucket: Bucket, k: int, row: RowMapping) -> HealthCell:
    start = datetime.fromtimestamp(int(row["cell"]) * bucket.hours * 3600, UTC)
    devices = int(row["devices"])
    metrics = _metrics(row, devices) if devices >= k else None
    return HealthCell(model, str(row["version"]), bucket, start, k, metrics)


def _metrics(row: RowMapping, devices: int) -> HealthMetrics:
    # PostgreSQL sums BIGINT as NUMERIC: int() makes every backend's answer the same.
    def total(name: str) -> int:
        return int(row[name] or 0)

    histograms = {h.name: [total(c) for c in h.columns] for h in HISTOGRAMS}
    by_name = {h.name: _percentiles(h, histograms[h.name]) for h in HISTOGRAMS}
    errors_by_class = {str(c): total(column) for c, column in ERROR_COLUMNS.items()}
    errors, requests = sum(errors_by_class.values()), total("requests")
    device_hours = total("seconds") / 3600
    per_token_p50 = by_name["per_token"].p50
    epsilon = row["dp_epsilon"]
    return HealthMetrics(
        devices=devices,
        reports=int(row["reports"]),
        device_hours=device_hours,
        requests=requests,
        tokens_in=total("tokens_in"),
        tokens_out=total("tokens_out"),
        errors=errors,
        error_rate=errors / requests if requests else None,
        errors_by_class=errors_by_class,
        rejections=total("rejections"),
        ttft=by_name["ttft"],
        per_token=by_name["per_token"],
        tokens_per_second=1 / per_token_p50 if per_token_p50 else None,
        load=by_name["load"],
        peak_memory=by_name["peak_memory"],
        crashes=total("crashes"),
        restarts=total("restarts"),
        crashes_per_device_hour=total("crashes") / device_hours if device_hours else None,
        update_outcomes={str(o): total(column) for o, column in OUTCOME_COLUMNS.items()},
        histograms=histograms,
        dp_epsilon=None if epsilon is None else float(epsilon),
    )
