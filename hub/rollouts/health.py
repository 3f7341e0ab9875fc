"""A release's health over a period from the k-anonymous telemetry: its cells summed into
one aggregate. One suppressed cell (fewer than k devices) makes the whole period unknown:
adding a hidden cell's numbers back would undo the suppression, and leaving it out would
judge the release on a chosen part of its devices."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import Engine

from hub.rollouts.gates import HealthAggregate
from hub.telemetry.models import HISTOGRAMS
from hub.telemetry.query import HealthCell, percentile, release_health

HealthQuery = Callable[[str, str, datetime], list[HealthCell]]
_EDGES = {histogram.name: histogram.edges for histogram in HISTOGRAMS}


def telemetry_query(engine: Engine, k: int) -> HealthQuery:
    def query(model: str, version: str, since: datetime) -> list[HealthCell]:
        return release_health(engine, model, version, since=since, k=k)

    return query


def aggregate(cells: Sequence[HealthCell]) -> HealthAggregate | None:
    """None when there are no cells or any is suppressed."""
    if not cells or any(cell.metrics is None for cell in cells):
        return None
    metrics = [cell.metrics for cell in cells if cell.metrics is not None]
    histograms = {
        name: [sum(column) for column in zip(*(m.histograms[name] for m in metrics), strict=True)]
        for name in ("ttft", "per_token")
    }
    requests = sum(m.requests for m in metrics)
    errors = sum(m.errors for m in metrics)
    device_hours = sum(m.device_hours for m in metrics)
    crashes = sum(m.crashes for m in metrics)
    ttft = percentile(histograms["ttft"], _EDGES["ttft"], 0.95)
    per_token = percentile(histograms["per_token"], _EDGES["per_token"], 0.95)
    per_token_median = percentile(histograms["per_token"], _EDGES["per_token"], 0.5)
    return HealthAggregate(
        devices=min(m.devices for m in metrics),
        error_rate=errors / requests if requests else None,
        ttft_p95=ttft,
        per_token_p95=per_token,
        tokens_per_second=1 / per_token_median if per_token_median else None,
        crashes_per_device_hour=crashes / device_hours if device_hours else None,
    )
