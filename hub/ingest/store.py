"""Writing a batch of accepted messages in one transaction, idempotently.

Every write is an INSERT ... ON CONFLICT (SQLite and PostgreSQL alike), so a message that is
delivered twice (a redelivery after a crash, overlapping subscriptions) changes nothing the
second time: received_messages and install_events are keyed by message id, the reported
state of a model moves only forward in time, and a device's last_seen only grows.
Rows are written in key order, so concurrent workers on PostgreSQL never deadlock.

One statement per table and batch: on SQLite executed for all its rows by the driver
(`executemany`, a loop in C); on PostgreSQL as one `INSERT ... SELECT FROM unnest(arrays)`
with the arrays in binary form. SQLAlchemy compiles each statement once per dialect, here;
the rows bypass its per-value type processing, which cost more CPU than the database did:
the only values that need converting (times; the devices' empty tags) go through
SQLAlchemy's own bind processors, once per distinct value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect, Table, case
from sqlalchemy.dialects import postgresql, sqlite

from edge_agent.protocol.messages import (
    DEVICE_TOPIC_OF,
    Envelope,
    InstallEvent,
    MessageKind,
    ReportedState,
)
from hub.fleet.models import (
    Device,
    InstallEventRecord,
    ReceivedMessage,
    ReportedModelState,
    UtcDateTime,
)
from hub.telemetry.models import TELEMETRY, telemetry_row
from hub.telemetry.rollup import mark_stale

DEVICES: Table = Device.__table__  # type: ignore[attr-defined]
REPORTED: Table = ReportedModelState.__table__  # type: ignore[attr-defined]
EVENTS: Table = InstallEventRecord.__table__  # type: ignore[attr-defined]
RECEIVED: Table = ReceivedMessage.__table__  # type: ignore[attr-defined]

Row = dict[str, Any]


def _insert(dialect: Dialect, table: Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing/do_update and `excluded`."""
    if dialect.name == "sqlite":
        return sqlite.insert(table)
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    raise ValueError(f"the hub's ingest supports SQLite and PostgreSQL, not {dialect.name}")


def _devices_statement(dialect: Dialect) -> Any:
    insert = _insert(dialect, DEVICES)
    current, offered = DEVICES.c.last_seen, insert.excluded.last_seen
    return insert.on_conflict_do_update(
        index_elements=[DEVICES.c.id],
        set_={
            "last_seen": case(
                (current.is_(None), offered), (offered > current, offered), else_=current
            )
        },
    )


def _received_statement(dialect: Dialect) -> Any:
    return _insert(dialect, RECEIVED).on_conflict_do_nothing(index_elements=[RECEIVED.c.message_id])


def _events_statement(dialect: Dialect) -> Any:
    return _insert(dialect, EVENTS).on_conflict_do_nothing(index_elements=[EVENTS.c.message_id])


_REPORTED_KEY = ("device_id", "model")


def _reported_statement(dialect: Dialect) -> Any:
    insert = _insert(dialect, REPORTED)
    return insert.on_conflict_do_update(
        index_elements=[REPORTED.c[name] for name in _REPORTED_KEY],
        set_={
            c.name: insert.excluded[c.name] for c in REPORTED.columns if c.name not in _REPORTED_KEY
        },
        # An older report (delayed in an outbox, redelivered) never replaces a newer one.
        where=insert.excluded.updated_at >= REPORTED.c.updated_at,
    )


def _telemetry_statement(dialect: Dialect) -> Any:
    return _insert(dialect, TELEMETRY).on_conflict_do_nothing(
        index_elements=[TELEMETRY.c.message_id]
    )


_EVENT_COLUMNS = (
    "message_id",
    *("device_id", "model", "version", "event", "from_version", "attempt", "error", "at"),
)
_REPORTED_COLUMNS = tuple(c.name for c in REPORTED.columns)
_TELEMETRY_COLUMNS = tuple(c.name for c in TELEMETRY.columns)
_STATEMENTS: dict[str, tuple[Callable[[Dialect], Any], tuple[str, ...]]] = {
    "devices": (_devices_statement, ("id", "tags", "last_seen")),
    "received": (
        _received_statement,
        ("message_id", "device_id", "kind", "sent_at", "received_at"),
    ),
    "events": (_events_statement, _EVENT_COLUMNS),
    "reported": (_reported_statement, _REPORTED_COLUMNS),
    "telemetry": (_telemetry_statement, _TELEMETRY_COLUMNS),
}


@dataclass(frozen=True)
class _Compiled:
    """One statement as the driver takes it, and how to hand it rows."""

    sql: str
    # Rows as tuples in this order for a positional paramstyle (SQLite's qmark); None: as
    # dicts (psycopg's pyformat).
    order: Callable[[Row], tuple[Any, ...]] | None
    # PostgreSQL: the whole batch as one array per column (see _columnar), these columns.
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _Dialect:
    statements: dict[str, _Compiled]
    time: Callable[[datetime], Any]  # an aware datetime as UtcDateTime binds it
    no_tags: Any  # a device's empty tags as the JSON column binds them


# By dialect, driver and paramstyle: what the compiled SQL depends on.
_DIALECTS: dict[tuple[str, str, str], _Dialect] = {}


def _compile(dialect: Dialect, name: str) -> _Compiled:
    build, columns = _STATEMENTS[name]
    compiled = build(dialect).compile(
        dialect=dialect, column_keys=list(columns), for_executemany=True
    )
    # Every column given, none added (a column default would need SQLAlchemy to fill it).
    if set(compiled.binds) != set(columns):
        raise AssertionError(f"{name}: binds {sorted(compiled.binds)} are not {columns}")
    positions = compiled.positiontup
    order = None if positions is None else itemgetter(*positions)
    if dialect.name == "postgresql":
        table: Table = compiled.statement.table
        types = {c.name: c.type.compile(dialect) for c in table.columns}
        return _Compiled(_columnar(str(compiled), types), None, tuple(columns))
    return _Compiled(str(compiled), order)


_FLOAT_TYPES = frozenset({"FLOAT", "REAL", "DOUBLE PRECISION", "NUMERIC"})


def _columnar(sql: str, types: dict[str, str]) -> str:
    """`INSERT ... VALUES (%(a)s::T, ...) ON CONFLICT ...` as `INSERT ... SELECT * FROM
    unnest(%(a)b::T[], ...) ON CONFLICT ...`: one statement and one round trip per batch
    instead of one per row. Each batch holds a key once (the callers de-duplicate), as ON
    CONFLICT DO UPDATE requires."""
    head, values = sql.split(" VALUES (", 1)
    binds_text, tail = values.split(") ON CONFLICT ", 1)
    binds = []
    for bind in (b.strip() for b in binds_text.split(",")):
        found = re.fullmatch(r"%\((\w+)\)s(::[A-Z ]+)?", bind)
        if found is None:
            raise AssertionError(f"unexpected bind parameter {bind} in {sql[:120]}")
        name, sql_type = found[1], types[found[1]]
        # Arrays go in PostgreSQL's binary format: psycopg dumps them about ten times
        # faster than as text, which it quotes element by element in Python. Not floats:
        # a binary array must be all floats, and a whole number may come as an int.
        style = "s" if sql_type in _FLOAT_TYPES else "b"
        binds.append(f"%({name}){style}::{sql_type}[]")
    # Built from SQLAlchemy's own compiled statement; every value stays a bound parameter.
    return f"{head} SELECT * FROM unnest({', '.join(binds)}) ON CONFLICT {tail}"  # noqa: S608


def _dialect(connection: Connection) -> _Dialect:
    dialect = connection.dialect
    key = (dialect.name, dialect.driver, dialect.paramstyle)
    known = _DIALECTS.get(key)
    if known is None:
        # dialect_impl: the processors SQLAlchemy itself would apply (SQLite's DATETIME
        # writes its own text format, which the hub's SQL compares as text).
        time = UtcDateTime().dialect_impl(dialect).bind_processor(dialect)
        tags = DEVICES.c.tags.type.dialect_impl(dialect).bind_processor(dialect)
        if time is None:
            raise AssertionError("UtcDateTime binds through its own processor")
        known = _Dialect(
            statements={name: _compile(dialect, name) for name in _STATEMENTS},
            time=time,
            no_tags={} if tags is None else tags({}),
        )
        _DIALECTS[key] = known
    return known


def _execute(connection: Connection, statement: _Compiled, rows: list[Row]) -> int:
    """Rows written (SQLite and psycopg sum executemany's counts; a conflict skipped or an
    update refused by its WHERE counts 0)."""
    # exec_driver_sql: with SQLAlchemy's events and error wrapping (the consumer tells a
    # lost database from a refused row by SQLAlchemy's exceptions).
    if statement.columns is not None:
        arrays = {name: [row[name] for row in rows] for name in statement.columns}
        return int(connection.exec_driver_sql(statement.sql, arrays).rowcount)
    parameters = rows if statement.order is None else [statement.order(row) for row in rows]
    return int(connection.exec_driver_sql(statement.sql, parameters).rowcount)  # executemany


def store(connection: Connection, envelopes: Iterable[Envelope], received_at: datetime) -> int:
    """Write `envelopes` within the caller's transaction; how many were new."""
    unique = {e.message_id: e for e in envelopes}
    if not unique:
        return 0
    batch = [unique[key] for key in sorted(unique)]
    dialect = _dialect(connection)
    # Each message's sent_at, converted once: several tables take it.
    sent = [dialect.time(e.sent_at) for e in batch]
    _touch_devices(connection, dialect, batch, sent)
    # Telemetry stays out of received_messages: an exact arrival time beside its message id
    # could be matched with the broker's connection log to find the device. Its own table
    # de-duplicates it by message id.
    identified = [(e, at) for e, at in zip(batch, sent, strict=True) if e.kind in DEVICE_TOPIC_OF]
    new = _received(
        connection, dialect, [e for e, _ in identified], [at for _, at in identified], received_at
    )
    kinds = {e.kind for e in batch}
    if MessageKind.INSTALL_EVENT in kinds:
        _events(connection, dialect, batch, sent)
    if MessageKind.REPORTED_STATE in kinds:
        _reported(connection, dialect, batch, sent)
    if MessageKind.TELEMETRY in kinds:
        new += _telemetry(connection, dialect, batch, received_at)
    return new


def _touch_devices(
    connection: Connection, dialect: _Dialect, batch: Sequence[Envelope], sent: Sequence[Any]
) -> None:
    newest: dict[str, tuple[datetime, Any]] = {}
    for envelope, at in zip(batch, sent, strict=True):
        if envelope.device_id is not None:
            seen = newest.get(envelope.device_id)
            if seen is None or envelope.sent_at > seen[0]:
                newest[envelope.device_id] = (envelope.sent_at, at)
    if newest:
        rows = [
            {"id": key, "tags": dialect.no_tags, "last_seen": newest[key][1]}
            for key in sorted(newest)
        ]
        _execute(connection, dialect.statements["devices"], rows)


def _received(
    connection: Connection,
    dialect: _Dialect,
    batch: Sequence[Envelope],
    sent: Sequence[Any],
    received_at: datetime,
) -> int:
    received = dialect.time(received_at)
    rows = [
        {
            "message_id": e.message_id,
            "device_id": e.device_id,
            "kind": str(e.kind),
            "sent_at": at,
            "received_at": received,
        }
        for e, at in zip(batch, sent, strict=True)
    ]
    if not rows:
        return 0
    # The rows the conflict clause skipped (stored before) count 0: the rest are new.
    return _execute(connection, dialect.statements["received"], rows)


def _events(
    connection: Connection, dialect: _Dialect, batch: Sequence[Envelope], sent: Sequence[Any]
) -> None:
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
            "at": at,
        }
        for e, at in zip(batch, sent, strict=True)
        if isinstance(e.payload, InstallEvent)
    ]
    _execute(connection, dialect.statements["events"], rows)


def _reported(
    connection: Connection, dialect: _Dialect, batch: Sequence[Envelope], sent: Sequence[Any]
) -> None:
    latest: dict[tuple[str, str], tuple[datetime, Row]] = {}
    for e, at in zip(batch, sent, strict=True):
        if not isinstance(e.payload, ReportedState) or e.device_id is None:
            continue
        for model, report in e.payload.models.items():
            key = (e.device_id, model)
            if key in latest and latest[key][0] >= e.sent_at:
                continue
            latest[key] = (
                e.sent_at,
                {
                    "device_id": e.device_id,
                    "model": model,
                    "active": report.active,
                    "previous": report.previous,
                    "pending": report.pending,
                    "floor": report.floor,
                    "phase": str(report.phase),
                    "last_result": None if report.last_result is None else str(report.last_result),
                    "last_error": report.last_error,
                    "held": report.held,
                    "agent_version": e.payload.agent_version,
                    "message_id": e.message_id,
                    "updated_at": at,
                },
            )
    if latest:
        rows = [latest[key][1] for key in sorted(latest)]
        _execute(connection, dialect.statements["reported"], rows)


def _telemetry(
    connection: Connection, dialect: _Dialect, batch: Sequence[Envelope], received_at: datetime
) -> int:
    rows = []
    for e in batch:
        if e.kind is MessageKind.TELEMETRY:
            row = telemetry_row(e)
            row["window_start"] = dialect.time(row["window_start"])
            rows.append(row)
    stored = _execute(connection, dialect.statements["telemetry"], rows)
    # A late report reopens its day in the daily summary (in this transaction: see rollup).
    mark_stale(connection, (row["window_hour"] for row in rows), received_at)
    return stored


def now() -> datetime:
    return datetime.now(UTC)
