"""Messages as devices send them, and waiting on the database."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select

from edge_agent.protocol.messages import (
    Envelope,
    Heartbeat,
    InstallEvent,
    ModelReport,
    ReportedState,
    UpdateEvent,
    encode,
    topic_for,
)
from hub.fleet.models import InstallEventRecord, ReceivedMessage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(device: str = "dev-1", n: int = 0, version: str = "1.0.0") -> Envelope:
    payload = InstallEvent(model="chat", version=version, event=UpdateEvent.INSTALLED)
    return Envelope.of(payload, device_id=device, sent_at=T0 + timedelta(seconds=n))


def report(device: str, active: str, *, seconds: int) -> Envelope:
    payload = ReportedState(
        agent_version="0.1.0", models={"chat": ModelReport(active=active, floor="1.0.0")}
    )
    return Envelope.of(payload, device_id=device, sent_at=T0 + timedelta(seconds=seconds))


def heartbeat(device: str, *, seconds: int) -> Envelope:
    return Envelope.of(
        Heartbeat(uptime_seconds=seconds), device_id=device, sent_at=T0 + timedelta(seconds=seconds)
    )


def wire(envelope: Envelope) -> tuple[str, bytes]:
    return topic_for(envelope), encode(envelope)


def count(engine: Engine, table: type = ReceivedMessage) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def distinct_events(engine: Engine) -> int:
    column = InstallEventRecord.__table__.c.message_id  # type: ignore[attr-defined]
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(column.distinct()))).scalar_one())


def wait_count(
    engine: Engine,
    expected: int,
    timeout_s: float = 20.0,
    counter: Callable[[Engine], int] | None = None,
) -> int:
    """Wait until `counter` (default: messages received) reaches `expected`; its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = (counter or count)(engine)
        if seen >= expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)
