"""release_health: aggregates per release and cell, k-anonymity, percentiles, buckets."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine

from edge_agent.protocol.telemetry import TTFT_CELLS, TTFT_EDGES_S
from hub.telemetry.query import Bucket, TelemetryQueryError, percentile, release_health
from tests.hub_telemetry.helpers import T0, busy, report, store_all


def test_a_cell_behind_fewer_than_k_devices_is_suppressed(engine: Engine) -> None:
    # Hour 0: five devices. Hour 1: four devices, one of them reporting three times
    # (three releases' worth of rows are still one pseudonym).
    store_all(engine, [busy(d) for d in range(5)] + [busy(d, hour=1) for d in range(4)])
    store_all(engine, [busy(0, hour=1, requests=7) for _ in range(2)])
    first, second = release_health(engine, "chat")
    assert not first.suppressed and first.metrics is not None
    assert (first.metrics.devices, first.metrics.requests) == (5, 500)
    assert second.suppressed and second.metrics is None
    assert "metrics" not in second.to_json() and second.to_json()["suppressed"] is True
    shown = release_health(engine, "chat", k=4)
    assert [c.suppressed for c in shown] == [False, False]
    assert shown[1].metrics is not None and shown[1].metrics.devices == 4
    assert [c.suppressed for c in release_health(engine, "chat", k=6)] == [True, True]


def test_the_numbers_of_a_cell(engine: Engine) -> None:
    agent: dict[str, Any] = {"model": None, "version": None}
    store_all(
        engine,
        [busy(d, update_outcomes={"succeeded": 1}, dp_epsilon=1.0 + d) for d in range(5)]
        + [report(0, crashes=3, restarts=3, **agent), report(1, restarts=1, **agent)]
        + [report(9, crashes=50, **agent)],  # a device that did not run the release
    )
    (cell,) = release_health(engine, "chat", version="1.0.0")
    m = cell.metrics
    assert m is not None and cell.start == T0 and cell.bucket == Bucket.HOUR
    assert (m.requests, m.errors, m.errors_by_class["timeout"]) == (500, 10, 10)
    assert m.error_rate == pytest.approx(0.02)
    assert (m.tokens_in, m.tokens_out, m.reports, m.device_hours) == (128_000, 64_000, 5, 5.0)
    assert m.ttft.p50 == pytest.approx(0.175) and m.ttft.unit == "s"
    assert m.per_token.p50 == pytest.approx(0.035)
    assert m.tokens_per_second == pytest.approx(1 / 0.035)
    assert (m.crashes, m.restarts) == (3, 4)
    assert m.crashes_per_device_hour == pytest.approx(3 / 5)
    assert m.update_outcomes == {"succeeded": 5, "failed": 0, "rolled_back": 0}
    assert m.load.p50 is None  # no model loads reported
    assert m.dp_epsilon == 5.0  # the weakest privacy among the reports
    assert m.histograms["ttft"][2] == 500


def test_releases_and_buckets(engine: Engine) -> None:
    store_all(
        engine,
        [busy(d, hour=h) for d in range(5) for h in (0, 1, 25)]
        + [busy(d, version="1.10.0") for d in range(5)]
        + [busy(d, version="1.2.0") for d in range(5)]
        + [busy(d, model="other") for d in range(5)],
    )
    hours = release_health(engine, "chat")
    assert [(c.version, c.start - T0) for c in hours] == [
        ("1.0.0", timedelta(0)),
        ("1.0.0", timedelta(hours=1)),
        ("1.0.0", timedelta(hours=25)),
        ("1.2.0", timedelta(0)),
        ("1.10.0", timedelta(0)),  # release order, not text order
    ]
    days = release_health(engine, "chat", version="1.0.0", bucket="day")
    assert [(c.start - T0, c.metrics and c.metrics.reports) for c in days] == [
        (timedelta(0), 10),
        (timedelta(days=1), 5),
    ]
    assert release_health(engine, "missing") == []


def test_since_starts_at_the_cell_that_holds_it(engine: Engine) -> None:
    store_all(engine, [busy(d, hour=h) for d in range(5) for h in (0, 1, 2)])
    # Mid-cell: the whole cell, never a slice of it (a slice could isolate a device).
    since = (T0 + timedelta(hours=1, minutes=30)).astimezone(timezone(timedelta(hours=2)))
    cells = release_health(engine, "chat", since=since)
    assert [c.start - T0 for c in cells] == [timedelta(hours=1), timedelta(hours=2)]
    day = release_health(engine, "chat", since=since, bucket=Bucket.DAY)
    assert len(day) == 1 and day[0].metrics is not None and day[0].metrics.reports == 15


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"k": 1}, "k must be at least 2"),
        ({"bucket": "week"}, "choose hour or day"),
        ({"since": datetime(2030, 1, 1)}, "must carry a time zone"),
    ],
)
def test_refused_queries(engine: Engine, arguments: dict[str, object], message: str) -> None:
    with pytest.raises(TelemetryQueryError, match=message):
        release_health(engine, "chat", **arguments)  # type: ignore[arg-type]


def test_percentiles_of_a_fixed_histogram() -> None:
    edges = (1.0, 2.0, 4.0)
    assert percentile([0, 0, 0, 0], edges, 0.5) is None
    assert percentile([10, 0, 0, 0], edges, 0.5) == pytest.approx(0.5)  # from 0
    assert percentile([0, 10, 10, 0], edges, 0.5) == pytest.approx(2.0)
    assert percentile([0, 10, 10, 0], edges, 0.75) == pytest.approx(3.0)
    assert percentile([0, 0, 0, 4], edges, 0.99) == 4.0  # open cell: its lower edge
    with pytest.raises(ValueError, match="do not fit"):
        percentile([1, 2], edges, 0.5)
    with pytest.raises(ValueError, match="not within"):
        percentile([1, 2, 3, 4], edges, 0)
    ttft = [0] * TTFT_CELLS
    ttft[-1] = 1
    assert percentile(ttft, TTFT_EDGES_S, 0.5) == TTFT_EDGES_S[-1]
