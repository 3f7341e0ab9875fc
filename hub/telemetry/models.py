"""The telemetry table: one row per received report, keyed by its message id.

Why rows and not pre-aggregated cells: k-anonymity counts DISTINCT pseudonyms, and distinct
counts do not add up (two hour cells with 3 devices each may be 3 devices or 6 in the day).
With one row per report, COUNT(DISTINCT pseudonym) is exact for any cell the query asks
for (hour or day, one release or all of a model's), and the message id makes a redelivered
report a no-op. A pseudonym is HMAC(device secret, ISO week), so within a week it counts
devices exactly, and a UTC hour or day never spans two weeks. Only reports whose anonymous
token proves their pseudonym (hub.telemetry.keys) get here, so a device cannot add itself
twice under invented pseudonyms. The token is not stored: it is a function of pseudonym and
period, so it would add nothing but bytes.

What a row holds is the report's own numbers and enums: no device id, no MQTT client id, no
time of arrival (received_messages keeps the envelope's times). Counters and histogram cells
are one column each so that SQL sums them on either database; the columns follow the
protocol's histogram edges and enums, and the schema test fails if a migration has not.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, String, Table

from edge_agent.protocol.messages import Envelope
from edge_agent.protocol.telemetry import (
    LOAD_EDGES_S,
    PEAK_MEMORY_EDGES_MIB,
    PER_TOKEN_EDGES_S,
    TTFT_EDGES_S,
    ErrorClass,
    TelemetryReport,
    UpdateOutcome,
)
from hub.fleet.models import ID_CHARS, MESSAGE_ID_CHARS, METADATA, UtcDateTime

__all__ = [
    "COUNTERS",
    "ERROR_COLUMNS",
    "HISTOGRAMS",
    "OUTCOME_COLUMNS",
    "TELEMETRY",
    "TELEMETRY_DAILY",
    "TELEMETRY_DAYS",
    "TOKEN_ISSUANCE",
    "Histogram",
    "telemetry_row",
]

PSEUDONYM_CHARS = 64  # HMAC-SHA256 in hex
ENUM_CHARS = 16  # the hardware class enums' longest value is 8


@dataclass(frozen=True)
class Histogram:
    """A report's histogram: its field, the protocol's bucket edges, the unit of the edges."""

    field: str
    edges: tuple[float, ...]
    unit: str

    @functools.cached_property  # read for every stored row
    def columns(self) -> list[str]:
        # Cell i counts EDGES[i-1] <= v < EDGES[i]: len(edges) + 1 cells.
        return [f"{self.name}_{i:02d}" for i in range(len(self.edges) + 1)]

    @functools.cached_property
    def name(self) -> str:
        return self.field.removesuffix("_histogram")


HISTOGRAMS: tuple[Histogram, ...] = (
    Histogram("ttft_histogram", TTFT_EDGES_S, "s"),
    Histogram("per_token_histogram", PER_TOKEN_EDGES_S, "s"),
    Histogram("load_histogram", LOAD_EDGES_S, "s"),
    Histogram("peak_memory_histogram", PEAK_MEMORY_EDGES_MIB, "MiB"),
)
COUNTERS = ("requests", "tokens_in", "tokens_out", "rejections", "restarts", "crashes")


ERROR_COLUMNS: Mapping[ErrorClass, str] = {c: f"errors_{c.value}" for c in ErrorClass}
OUTCOME_COLUMNS: Mapping[UpdateOutcome, str] = {o: f"updates_{o.value}" for o in UpdateOutcome}


def _count(name: str) -> Column[int]:
    # BIGINT: the protocol allows counts up to 2**53 - 1.
    return Column(name, BigInteger(), nullable=False)


TELEMETRY = Table(
    "telemetry_reports",
    METADATA,
    Column("message_id", String(MESSAGE_ID_CHARS), primary_key=True),
    Column("pseudonym", String(PSEUDONYM_CHARS), nullable=False),
    Column("window_start", UtcDateTime(), nullable=False),
    # Hours since 1970-01-01 UTC of window_start: hour and day buckets by integer division,
    # the same SQL on SQLite and PostgreSQL.
    Column("window_hour", Integer(), nullable=False),
    Column("window_seconds", Integer(), nullable=False),
    Column("model", String(ID_CHARS), nullable=True),  # None: the agent's own report
    Column("version", String(64), nullable=True),
    Column("agent_version", String(64), nullable=False),
    Column("hardware_cores", String(ENUM_CHARS), nullable=False),
    Column("hardware_memory", String(ENUM_CHARS), nullable=False),
    Column("hardware_accelerator", String(ENUM_CHARS), nullable=False),
    *(_count(name) for name in COUNTERS),
    *(_count(name) for name in ERROR_COLUMNS.values()),
    *(_count(name) for name in OUTCOME_COLUMNS.values()),
    *(_count(name) for histogram in HISTOGRAMS for name in histogram.columns),
    Column("dp_epsilon", Float(), nullable=True),
    # The query's filter, and the join of a release's rows to the same window's agent row.
    Index(None, "model", "version", "window_hour"),
    Index(None, "pseudonym", "window_start"),
    # The daily roll-up reads one day of every model at a time.
    Index(None, "window_hour"),
)


# The daily summary (hub.telemetry.rollup): one row per release and UTC day, holding what
# release_health adds up for a day cell, and the day's DISTINCT pseudonym count computed
# from the day's rows (distinct counts do not add up, so it is never a sum of hours). No
# pseudonym is kept: k-anonymity is applied when a cell is read, to `devices`, as for raw rows.
TELEMETRY_DAILY = Table(
    "telemetry_daily",
    METADATA,
    Column("model", String(ID_CHARS), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("day", Integer(), primary_key=True),  # days since 1970-01-01 UTC
    Column("devices", Integer(), nullable=False),
    Column("reports", Integer(), nullable=False),
    Column("seconds", BigInteger(), nullable=False),
    Column("dp_epsilon", Float(), nullable=True),
    *(_count(name) for name in COUNTERS),
    *(_count(name) for name in ERROR_COLUMNS.values()),
    *(_count(name) for name in OUTCOME_COLUMNS.values()),
    *(_count(name) for histogram in HISTOGRAMS for name in histogram.columns),
)

# Which days the summary holds: `fresh` while the day's summary is complete; a report for a
# closed day turns it false (ingest), until the roll-up job summarises the day again.
TELEMETRY_DAYS = Table(
    "telemetry_daily_days",
    METADATA,
    Column("day", Integer(), primary_key=True, autoincrement=False),
    Column("fresh", Boolean(), nullable=False),
)


# One row per device and period that was issued its anonymous token: what limits a device to
# one token a period. It holds who and when, never the blinded element or what was returned:
# nothing here can be matched with a stored report's pseudonym or token.
TOKEN_ISSUANCE = Table(
    "telemetry_token_issuance",
    METADATA,
    Column("device_id", String(ID_CHARS), primary_key=True),
    Column("period", String(8), primary_key=True),  # ISO week, e.g. 2030-W02
    Column("issued_at", UtcDateTime(), nullable=False),
)


def telemetry_row(envelope: Envelope) -> dict[str, Any]:
    """The row for a telemetry message. It reads the report and the message id only: the
    envelope of a telemetry message names no device, and nothing here would keep one."""
    report = envelope.payload
    if not isinstance(report, TelemetryReport):
        raise TypeError(f"a {envelope.kind} message is not a telemetry report")
    row: dict[str, Any] = {
        "message_id": envelope.message_id,
        "pseudonym": report.pseudonym,
        "window_start": report.window_start,
        "window_hour": int(report.window_start.timestamp()) // 3600,
        "window_seconds": report.window_seconds,
        "model": report.model,
        "version": report.version,
        "agent_version": report.agent_version,
        "hardware_cores": report.hardware.cores.value,
        "hardware_memory": report.hardware.memory.value,
        "hardware_accelerator": report.hardware.accelerator.value,
        "dp_epsilon": report.dp_epsilon,
    }
    row.update({name: getattr(report, name) for name in COUNTERS})
    row.update({column: report.errors.get(c, 0) for c, column in ERROR_COLUMNS.items()})
    outcomes = report.update_outcomes
    row.update({column: outcomes.get(o, 0) for o, column in OUTCOME_COLUMNS.items()})
    for histogram in HISTOGRAMS:
        row.update(zip(histogram.columns, getattr(report, histogram.field), strict=True))
    return row
