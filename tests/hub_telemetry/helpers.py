"""Telemetry messages as devices send them, and storing them without a broker."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from edge_agent.protocol.messages import Envelope
from edge_agent.protocol.telemetry import (
    PER_TOKEN_CELLS,
    TTFT_CELLS,
    Accelerator,
    CoresBucket,
    HardwareClass,
    MemoryBucket,
    TelemetryReport,
    iso_week,
)
from hub.ingest.store import now, store
from hub.telemetry.keys import PeriodKeys
from hub.telemetry.models import TELEMETRY

# The hub's token seed in these tests: reports made here carry the token it would issue.
TOKEN_SEED = b"edge-fleet telemetry test seed!!"
TOKEN_KEYS = PeriodKeys(TOKEN_SEED)
WITH_TOKEN = "issued"  # report()'s default: the token the hub issued for the pseudonym

# A Tuesday: every hour and day of the tests lies in one ISO week.
T0 = datetime(2030, 1, 8, 0, 0, tzinfo=UTC)
HARDWARE = HardwareClass(
    cores=CoresBucket.C5_8, memory=MemoryBucket.GIB_16_32, accelerator=Accelerator.CPU
)


def pseudonym(device: int, week: str = "") -> str:
    # The shape of the agent's HMAC-SHA256; the hub never sees how it was made.
    return hashlib.sha256(f"device-{device}/{week}".encode()).hexdigest()


def report(
    device: int,
    *,
    hour: int = 0,
    model: str | None = "chat",
    version: str | None = "1.0.0",
    token: str | None = WITH_TOKEN,
    **fields: Any,
) -> Envelope:
    """A one-hour report of `device` (a number; the hub sees only its pseudonym), with the
    token the hub issued for that pseudonym unless `token` says otherwise."""
    start = T0 + timedelta(hours=hour)
    name = fields.pop("pseudonym", pseudonym(device, iso_week(start)))
    if token == WITH_TOKEN:
        token = TOKEN_KEYS.token(iso_week(start), name).hex()
    payload = TelemetryReport(
        pseudonym=name,
        token=token,
        period=iso_week(start),
        window_start=start,
        window_seconds=3600,
        model=model,
        version=version,
        agent_version="0.3.0",
        hardware=HARDWARE,
        **fields,
    )
    return Envelope.of(payload, sent_at=start + timedelta(hours=1, seconds=device))


def busy(device: int, **fields: Any) -> Envelope:
    """A report with traffic: 100 requests, 2 errors, fast first tokens, 20 ms per token."""
    ttft = [0] * TTFT_CELLS
    ttft[2] = 100  # 0.1 <= ttft < 0.25 s
    per_token = [0] * PER_TOKEN_CELLS
    per_token[3] = 100  # 0.02 <= per-token latency < 0.05 s
    defaults: dict[str, Any] = {
        "requests": 100,
        "tokens_in": 25_600,
        "tokens_out": 12_800,
        "ttft_histogram": ttft,
        "per_token_histogram": per_token,
        "errors": {"timeout": 2},
    }
    return report(device, **{**defaults, **fields})


def store_all(engine: Engine, envelopes: list[Envelope]) -> int:
    with engine.begin() as connection:
        return store(connection, envelopes, now())


def stored(engine: Engine) -> int:
    """How many telemetry reports the hub holds."""
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(TELEMETRY)).scalar_one())
