"""Writing a batch of accepted messages in one transaction, idempotently.

Every write is an INSERT ... ON CONFLICT (SQLite and PostgreSQL alike), so a message that is
delivered twice (a redelivery after a crash, overlapping subscriptions) changes nothing the
second time: received_messages and install_events are keyed by message id, the reported
state of a model moves only forward in time, and a device's last_seen only grows.
Rows are written in key order, so concurrent workers on PostgreSQL never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, case
from sqlalchemy.dialects import postgresql, sqlite

from edge_agent.protocol.messages import Envelope, InstallEvent, MessageKind, ReportedState
from hub.fleet.models import Device, InstallEventRecord, ReceivedMessage, ReportedModelState
from hub.telemetry.models import TELEMETRY, telemetry_row

DEVICES: Table = Device.__table__  # type: ignore[attr-defined]
REPORTED: Table = ReportedModelState.__table__  # type: ignore[attr-defined]
EVENTS: Table = InstallEventRecord.__table__  # type: ignore[attr-defined]
RECEIVED: Table = ReceivedMessage.__table__  # type: ignore[attr-defined]


def _insert(connection: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing/do_update and `excluded`."""
    name = connection.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ValueError(f"the hub's ingest supports SQLite and PostgreSQL, not {name}")


def store(connection: Connection, envelopes: Iterable[Envelope], received_at: datetime) -> int:
    """Write `envelopes` within the caller's transaction; how many were new."""
    unique = {e.message_id: e for e in envelopes}
    if not unique:
        return 0
    batch = [unique[key] for key in sorted(unique)]
    _touch_devices(connection, batch)
    new = _received(connection, batch, received_at)
    _events(connection, batch)
    _reported(connection, batch)
    _telemetry(connection, batch)
    return new


def _touch_devices(connection: Connection, batch: Sequence[Envelope]) -> None:
    newest: dict[str, datetime] = {}
    for envelope in batch:
        if envelope.device_id is not None:
            seen = newest.get(envelope.device_id)
            if seen is None or envelope.sent_at > seen:
                newest[envelope.device_id] = envelope.sent_at
    if not newest:
        return
    insert = _insert(connection, DEVICES)
    current, offered = DEVICES.c.last_seen, insert.excluded.last_seen
    statement = insert.on_conflict_do_update(
        index_elements=[DEVICES.c.id],
        set_={
            "last_seen": case(
                (current.is_(None), offered), (offered > current, offered), else_=current
            )
        },
    )
    rows = [{"id": key, "tags": {}, "last_seen": newest[key]} for key in sorted(newest)]
    connection.execute(statement, rows)


def _received(connection: Connection, batch: Sequence[Envelope], received_at: datetime) -> int:
    rows = [
        {
            "message_id": e.message_id,
            "device_id": e.device_id,
            "kind": str(e.kind),
            "sent_at": e.sent_at,
            "received_at": received_at,
        }
        for e in batch
    ]
    # One statement, executed for many rows: SQLAlchemy's "insertmanyvalues" sends them as
    # multi-row INSERTs, yet compiles the statement once and caches it (a `.values(rows)`
    # statement is compiled afresh for every batch, which cost more than the database did).
    # RETURNING names the rows that were new, on SQLite (3.35+) and PostgreSQL alike.
    statement = (
        _insert(connection, RECEIVED)
        .on_conflict_do_nothing(index_elements=[RECEIVED.c.message_id])
        .returning(RECEIVED.c.message_id)
    )
    return len(connection.execute(statement, rows).all())


def _events(connection: Connection, batch: Sequence[Envelope]) -> None:
    rows = [
        {
            "message_id": e.message_id,
            "device_id": e.device_id,
            "model": e.payload.model,
            "version": e.payload.version,
            "event": str(e.payload.event),
            "from_version": e.payload.from_version,
            "attempt": e.payload.attempt,
            "error": e.payload.error,
            "at": e.sent_at,
        }
        for e in batch
        if isinstance(e.payload, InstallEvent)
    ]
    if rows:
        statement = _insert(connection, EVENTS).on_conflict_do_nothing(
            index_elements=[EVENTS.c.message_id]
        )
        connection.execute(statement, rows)


def _reported(connection: Connection, batch: Sequence[Envelope]) -> None:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for e in batch:
        if not isinstance(e.payload, ReportedState) or e.device_id is None:
            continue
        for model, report in e.payload.models.items():
            key = (e.device_id, model)
            if key in latest and latest[key]["updated_at"] >= e.sent_at:
                continue
            latest[key] = {
                "device_id": e.device_id,
                "model": model,
                "active": report.active,
                "previous": report.previous,
                "pending": report.pending,
                "floor": report.floor,
                "phase": str(report.phase),
                "last_result": None if report.last_result is None else str(report.last_result),
                "last_error": report.last_error,
                "agent_version": e.payload.agent_version,
                "message_id": e.message_id,
                "updated_at": e.sent_at,
            }
    if not latest:
        return
    insert = _insert(connection, REPORTED)
    columns = [c.name for c in REPORTED.columns if c.name not in ("device_id", "model")]
    statement = insert.on_conflict_do_update(
        index_elements=[REPORTED.c.device_id, REPORTED.c.model],
        set_={name: insert.excluded[name] for name in columns},
        # An older report (delayed in an outbox, redelivered) never replaces a newer one.
        where=insert.excluded.updated_at >= REPORTED.c.updated_at,
    )
    connection.execute(statement, [latest[key] for key in sorted(latest)])


def _telemetry(connection: Connection, batch: Sequence[Envelope]) -> None:
    rows = [telemetry_row(e) for e in batch if e.kind is MessageKind.TELEMETRY]
    if rows:
        statement = _insert(connection, TELEMETRY).on_conflict_do_nothing(
            index_elements=[TELEMETRY.c.message_id]
        )
        connection.execute(statement, rows)


def now() -> datetime:
    return datetime.now(UTC)
