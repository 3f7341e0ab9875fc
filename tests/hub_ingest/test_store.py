"""The idempotent batch writer, without a broker."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, select

from hub.fleet import registry
from hub.fleet.models import InstallEventRecord, ReceivedMessage, ReportedModelState
from hub.ingest.store import now, store
from hub.telemetry.models import TELEMETRY
from tests.hub_ingest.helpers import T0, count, event, heartbeat, report
from tests.hub_telemetry.helpers import busy


def test_a_message_stored_twice_counts_once(engine: Engine) -> None:
    first = event("dev-1")
    with engine.begin() as connection:
        assert store(connection, [first, first, event("dev-2")], now()) == 2
    with engine.begin() as connection:
        assert store(connection, [first], now()) == 0
    assert count(engine, InstallEventRecord) == 2
    assert count(engine, ReceivedMessage) == 2


def test_reported_state_and_last_seen_only_move_forward(engine: Engine) -> None:
    newer, older = report("dev-1", "2.0.0", seconds=20), report("dev-1", "1.0.0", seconds=10)
    with engine.begin() as connection:
        store(connection, [newer, heartbeat("dev-1", seconds=5)], now())
    with engine.begin() as connection:
        store(connection, [older], now())  # delayed in an outbox: arrives last
    details = registry.show_device(engine, "dev-1")
    assert [(m.model, m.active, m.floor) for m in details.models] == [("chat", "2.0.0", "1.0.0")]
    assert details.device.last_seen == T0 + timedelta(seconds=20)
    assert count(engine, ReportedModelState) == 1


def test_newest_report_in_one_batch_wins(engine: Engine) -> None:
    with engine.begin() as connection:
        store(connection, [report("d", "3.0.0", seconds=3), report("d", "1.0.0", seconds=1)], now())
    assert registry.show_device(engine, "d").models[0].active == "3.0.0"


def test_one_batch_mixes_missing_whole_and_fractional_floats(engine: Engine) -> None:
    """PostgreSQL takes each column as one array: a float column with None, a whole number
    and a fraction in one batch must still store as given."""
    batch = [busy(0), busy(1, dp_epsilon=1.0), busy(2, dp_epsilon=0.25)]
    with engine.begin() as connection:
        assert store(connection, batch, now()) == 3
    with engine.connect() as connection:
        stored = connection.execute(select(TELEMETRY.c.dp_epsilon)).scalars().all()
    assert sorted(stored, key=lambda v: -1 if v is None else v) == [None, 0.25, 1.0]
