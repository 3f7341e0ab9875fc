"""The durable outbox: every message the agent sends is written here first.

    put()      the agent stores a message (state report, install event, telemetry batch)
    pending()  the link reads the oldest messages, in the order they were put, to publish
    ack()      the broker acknowledged one (PUBACK): only now is its row deleted

put() returns after the row is committed, so a message survives a crash, a kill -9 or a
power cut, and it leaves only once the broker has it: at-least-once delivery. The message
id lets the hub drop the duplicates that a resend can make.

Bounded by a message count and a byte total. When a new message does not fit, the oldest
telemetry goes first, counted in a persisted counter that the status shows. State reports
and events are never dropped: when nothing but them is left, put() refuses with OutboxFull
and changes nothing, rather than let the outbox grow without bound on the disk that also
holds the models (inference must keep running whatever the link does).

One connection behind one lock: paho's network thread calls ack() while the agent calls
put(), and the lock makes each operation (check the bound, drop, insert) one step. A commit
takes well under a millisecond, so the network thread never waits long. One process owns an
outbox; another process (a status command) may read it, as WAL lets readers run beside the
writer, and every transaction takes the write lock up front (BEGIN IMMEDIATE), so even a
second writer could not interleave with the bound check.

    <path>              SQLite, WAL; schema version in PRAGMA user_version
      outbox_message    one row per queued message, seq = FIFO order
      outbox_totals     one row: message count and bytes (kept by triggers), dropped telemetry
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import URL, Connection, Engine, Index, create_engine, event, func, insert
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import registry
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, col, delete, select, update

from edge_agent.atomic import make_dirs
from edge_agent.protocol import MAX_MESSAGE_BYTES
from edge_agent.sync.errors import (
    InvalidMessage,
    MessageIdConflict,
    OutboxClosed,
    OutboxFull,
    OutboxUnusable,
    PayloadTooLarge,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: seq AUTOINCREMENT
# Both agent slots share the outbox. A newer agent changes it only additively (columns with
# defaults, new tables) while its slot may still fall back, and says so here: the oldest
# schema that can still read and write the file. The previous agent then opens it as it is.
COMPAT_TABLE = "outbox_schema_compat"
# The protocol's limit, refused at put() already: an oversized publish would make Mosquitto
# drop the connection and paho resend it forever, blocking everything queued behind it.
MAX_PAYLOAD_BYTES = MAX_MESSAGE_BYTES
MAX_TOPIC_BYTES = 65_535  # an MQTT UTF-8 string
MAX_MESSAGE_ID_CHARS = 128
DEFAULT_MAX_MESSAGES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
BUSY_TIMEOUT_S = 5.0
_DROP_PAGE_ROWS = 256
_IDS_PER_STATEMENT = 500  # stays far below SQLite's limit on bound parameters


class OutboxKind(StrEnum):
    STATE = "state"  # reported state: never dropped
    EVENT = "event"  # install results and the like: never dropped
    TELEMETRY = "telemetry"  # may be dropped, oldest first, when the outbox is full


@dataclass(frozen=True)
class OutboxItem:
    seq: int  # FIFO position; also a cursor for pending(after=...)
    message_id: str
    topic: str
    payload: bytes
    kind: OutboxKind
    created_at: datetime  # UTC
    attempts: int  # times handed to the publisher (record_attempt)


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    size_bytes: int
    by_kind: dict[OutboxKind, int]
    oldest_created_at: datetime | None
    dropped_telemetry: int


# Tables of our own registry: create_all() must not create the tables of other modules
# (the hub's) that share SQLModel's default metadata.
_registry = registry()


class _Table(SQLModel, registry=_registry):
    pass


class _Message(_Table, table=True):
    __tablename__ = "outbox_message"
    # AUTOINCREMENT: a seq is never used twice, even after the queue emptied. Without it
    # SQLite starts again at 1, and the link, which sends what lies after the last seq it
    # handed over, would pass over the new messages until it reconnects.
    __table_args__ = (
        Index("ix_outbox_message_kind_seq", "kind", "seq"),
        {"sqlite_autoincrement": True},
    )

    seq: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True)
    topic: str
    kind: str
    payload: bytes
    size_bytes: int  # payload + topic, what the byte bound counts
    created_at_s: float  # Unix time
    attempts: int = 0


class _Totals(_Table, table=True):
    __tablename__ = "outbox_totals"

    id: int = Field(default=1, primary_key=True)
    messages: int = 0
    size_bytes: int = 0
    dropped_telemetry: int = 0


# Totals kept by the database itself, so that no delete path can forget them and the bound
# check reads one row instead of scanning the queue.
_TRIGGERS = (
    """CREATE TRIGGER outbox_message_added AFTER INSERT ON outbox_message BEGIN
        UPDATE outbox_totals SET messages = messages + 1,
            size_bytes = size_bytes + NEW.size_bytes WHERE id = 1;
    END""",
    """CREATE TRIGGER outbox_message_removed AFTER DELETE ON outbox_message BEGIN
        UPDATE outbox_totals SET messages = messages - 1,
            size_bytes = size_bytes - OLD.size_bytes WHERE id = 1;
    END""",
)


def _create_engine(path: Path) -> Engine:
    engine = create_engine(
        URL.create("sqlite", database=str(path)),
        # One connection for every thread; the Outbox's lock serialises its use.
        poolclass=StaticPool,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # sqlite3's own transaction handling would start no transaction before a SELECT:
        # the bound check must read and write in one, so SQLAlchemy emits BEGIN (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: in WAL mode NORMAL survives a process crash but may lose the
            # last commits on a power cut, and edge boxes lose power. The outbox sees a few
            # messages a minute (state, events, aggregated telemetry), so one fsync per
            # commit (about 0.25 ms measured here) costs nothing that matters.
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _upgrade_from_1(conn: Connection) -> None:
    """Version 1 reused seqs once the queue emptied: the same rows, in a table whose seqs
    only grow. One transaction: an interrupted upgrade leaves version 1 as it was."""
    conn.exec_driver_sql("DROP TRIGGER outbox_message_added")
    conn.exec_driver_sql("DROP TRIGGER outbox_message_removed")
    conn.exec_driver_sql("DROP INDEX ix_outbox_message_kind_seq")
    conn.exec_driver_sql("ALTER TABLE outbox_message RENAME TO outbox_message_v1")
    _Message.__table__.create(conn)  # type: ignore[attr-defined]
    # Before the triggers: the totals already count these rows.
    conn.exec_driver_sql("INSERT INTO outbox_message SELECT * FROM outbox_message_v1")
    conn.exec_driver_sql("DROP TABLE outbox_message_v1")
    for ddl in _TRIGGERS:
        conn.exec_driver_sql(ddl)
    conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _readable_from(conn: Connection, version: int) -> int | None:
    """The oldest schema that can use this file, as the writer of schema `version` declared
    it (None: unsaid, or said by an earlier schema and so not about this one)."""
    exists = conn.exec_driver_sql(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (COMPAT_TABLE,)
    ).scalar_one()
    if not exists:
        return None
    value = conn.exec_driver_sql(
        "SELECT min(readable_from) FROM outbox_schema_compat WHERE written_by = ?", (version,)
    ).scalar_one()
    return None if value is None else int(value)


def _write_readable_from(conn: Connection, version: int) -> None:
    conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS outbox_schema_compat "
        "(written_by INTEGER NOT NULL, readable_from INTEGER NOT NULL)"
    )
    conn.exec_driver_sql("DELETE FROM outbox_schema_compat")
    conn.exec_driver_sql(
        "INSERT INTO outbox_schema_compat VALUES (?, ?)", (SCHEMA_VERSION, int(version))
    )


class Outbox:
    def __init__(
        self,
        path: Path,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        if not 0 < max_payload_bytes < max_bytes:
            raise ValueError(
                f"need 0 < max_payload_bytes ({max_payload_bytes}) < max_bytes ({max_bytes})"
            )
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_payload_bytes = max_payload_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        # Durably: a power cut that forgets the folder forgets every message in it. (The
        # file's own entry is synced by SQLite, which syncs the folder when it makes the WAL.)
        make_dirs(path.parent)
        self._engine = _create_engine(path)
        try:
            self._open()
        except DatabaseError as exc:
            self._engine.dispose()
            raise OutboxUnusable(f"{path}: not a usable outbox database ({exc.orig})") from exc
        except BaseException:
            self._engine.dispose()
            raise

    def _open(self) -> None:
        with self._engine.begin() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar_one()
            if str(mode).lower() != "wal":
                raise OutboxUnusable(
                    f"{self.path}: SQLite cannot use WAL here (journal mode {mode}); "
                    "put the outbox on a local filesystem"
                )
            version = int(conn.exec_driver_sql("PRAGMA user_version").scalar_one())
            if version > SCHEMA_VERSION:
                readable_from = _readable_from(conn, version)
                if readable_from is not None and readable_from <= SCHEMA_VERSION:
                    return  # a newer agent's additive schema: used as it is, not rewritten
                raise OutboxUnusable(
                    f"{self.path}: outbox schema version {version} is newer than this "
                    f"agent's ({SCHEMA_VERSION}) and not readable by it; start the newer "
                    "agent's slot again, or move the file aside (its unsent messages are "
                    "then lost)"
                )
            if version == SCHEMA_VERSION:
                return
            if version == 1:
                _upgrade_from_1(conn)
                return
            if conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar_one():
                raise OutboxUnusable(f"{self.path}: a database that is not an outbox")
            _registry.metadata.create_all(conn)
            for ddl in _TRIGGERS:
                conn.exec_driver_sql(ddl)
            conn.execute(insert(_Totals).values(id=1))
            _write_readable_from(conn, SCHEMA_VERSION)
            conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """One write-locked transaction, committed on leaving, rolled back on an error."""
        with self._lock:
            if self._closed:
                raise OutboxClosed(f"{self.path}: the outbox has been closed")
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                yield session

    # --- writing -------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, kind: OutboxKind, message_id: str) -> None:
        """Store a message durably; returns once it is committed.

        Idempotent on message_id while the message is queued (a retry of the same put is a
        no-op; the same id with other content is refused). A telemetry message that cannot
        fit even after all older telemetry is dropped is itself dropped and counted.
        """
        kind = self._validated(topic, payload, kind, message_id)
        size = len(payload) + len(topic.encode())
        with self._transaction() as session:
            existing = session.exec(
                select(_Message).where(_Message.message_id == message_id)
            ).first()
            if existing is not None:
                if (existing.topic, existing.kind, existing.payload) != (topic, kind, payload):
                    raise MessageIdConflict(
                        f"message {message_id} is already queued with a different "
                        "topic, kind or payload"
                    )
                return
            messages, size_bytes = session.exec(
                select(_Totals.messages, _Totals.size_bytes).where(_Totals.id == 1)
            ).one()
            over_messages = messages + 1 - self.max_messages
            over_bytes = size_bytes + size - self.max_bytes
            if (over_messages > 0 or over_bytes > 0) and not self._make_room(
                session, over_messages, over_bytes, kind, message_id
            ):
                return
            session.add(
                _Message(
                    message_id=message_id,
                    topic=topic,
                    kind=kind.value,
                    payload=payload,
                    size_bytes=size,
                    created_at_s=self._clock(),
                )
            )

    def _make_room(
        self,
        session: Session,
        over_messages: int,
        over_bytes: int,
        kind: OutboxKind,
        message_id: str,
    ) -> bool:
        """Drop the oldest telemetry until a new message fits. False: it is telemetry that
        cannot fit at all, and was dropped (counted) instead of stored."""
        freed_messages = freed_bytes = 0
        last_seq = cursor = 0
        while freed_messages < over_messages or freed_bytes < over_bytes:
            page = session.exec(
                select(_Message.seq, _Message.size_bytes)
                .where(_Message.kind == OutboxKind.TELEMETRY.value, col(_Message.seq) > cursor)
                .order_by(col(_Message.seq))
                .limit(_DROP_PAGE_ROWS)
            ).all()
            if not page:
                break
            for seq, row_bytes in page:
                assert seq is not None  # a stored row always has its primary key
                freed_messages += 1
                freed_bytes += row_bytes
                last_seq = cursor = seq
                if freed_messages >= over_messages and freed_bytes >= over_bytes:
                    break
        if freed_messages < over_messages or freed_bytes < over_bytes:
            if kind is not OutboxKind.TELEMETRY:
                raise OutboxFull(
                    f"outbox {self.path} is full ({self.max_messages} messages or "
                    f"{self.max_bytes} bytes) of state reports and events, which are never "
                    f"dropped: {kind} message {message_id} was not stored"
                )
            self._count_dropped(session, 1)
            log.warning("outbox full of state and events: telemetry %s dropped", message_id)
            return False
        session.exec(
            delete(_Message).where(
                col(_Message.kind) == OutboxKind.TELEMETRY.value, col(_Message.seq) <= last_seq
            )
        )
        self._count_dropped(session, freed_messages)
        # A dropped row may be in flight already; its late ack then finds nothing, harmlessly.
        log.warning("outbox full: dropped the %d oldest telemetry message(s)", freed_messages)
        return True

    @staticmethod
    def _count_dropped(session: Session, count: int) -> None:
        session.exec(
            update(_Totals)
            .where(col(_Totals.id) == 1)
            .values(dropped_telemetry=col(_Totals.dropped_telemetry) + count)
        )

    def _validated(
        self, topic: str, payload: bytes, kind: OutboxKind, message_id: str
    ) -> OutboxKind:
        """The kind as an enum, after refusing anything a broker would refuse or choke on."""
        if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS:
            raise InvalidMessage(
                f"message id {message_id!r} must be 1 to {MAX_MESSAGE_ID_CHARS} characters"
            )
        if not isinstance(payload, bytes):
            raise InvalidMessage(
                f"message {message_id}: payload must be bytes, not {type(payload).__name__}"
            )
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"message {message_id}: payload of {len(payload)} bytes is over the limit "
                f"of {self.max_payload_bytes} bytes"
            )
        try:
            kind = OutboxKind(kind)
        except ValueError:
            choices = ", ".join(k.value for k in OutboxKind)
            raise InvalidMessage(
                f"message {message_id}: kind {kind!r} is not one of {choices}"
            ) from None
        if not isinstance(topic, str) or not topic:
            raise InvalidMessage(f"message {message_id}: topic must be a non-empty string")
        # Wildcards and NUL are illegal in a published topic; `$` topics belong to the broker.
        bad = {"+", "#", "\0"} & set(topic)
        if bad or topic.startswith("$"):
            raise InvalidMessage(
                f"message {message_id}: topic {topic!r} is not publishable "
                "(no wildcards, NUL, or leading '$')"
            )
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            raise InvalidMessage(f"message {message_id}: topic is over {MAX_TOPIC_BYTES} bytes")
        return kind

    def record_attempt(self, message_ids: Iterable[str]) -> None:
        """Count one more hand-over to the publisher for each of these messages."""
        with self._transaction() as session:
            for chunk in _chunks(message_ids):
                session.exec(
                    update(_Message)
                    .where(col(_Message.message_id).in_(chunk))
                    .values(attempts=col(_Message.attempts) + 1)
                )

    def ack(self, message_id: str) -> bool:
        """The broker has the message: delete it. False if it was not queued (acked before,
        or telemetry dropped while in flight)."""
        return self.ack_many([message_id]) == 1

    def ack_many(self, message_ids: Iterable[str]) -> int:
        """ack() for many messages in one commit; returns how many were queued."""
        removed = 0
        with self._transaction() as session:
            for chunk in _chunks(message_ids):
                result = session.exec(delete(_Message).where(col(_Message.message_id).in_(chunk)))
                removed += int(result.rowcount)
        return removed

    # --- reading -------------------------------------------------------------------------

    def pending(self, limit: int = 100, *, after: int | None = None) -> list[OutboxItem]:
        """The oldest queued messages, first in first out; `after` skips those up to a seq
        (the ones already handed to the publisher)."""
        query = select(_Message).order_by(col(_Message.seq)).limit(limit)
        if after is not None:
            query = query.where(col(_Message.seq) > after)
        with self._transaction() as session:
            return [_item(row) for row in session.exec(query)]

    def depth(self) -> int:
        with self._transaction() as session:
            return session.exec(select(_Totals.messages).where(_Totals.id == 1)).one()

    def dropped_telemetry(self) -> int:
        with self._transaction() as session:
            return session.exec(select(_Totals.dropped_telemetry).where(_Totals.id == 1)).one()

    def stats(self) -> OutboxStats:
        with self._transaction() as session:
            totals = session.exec(select(_Totals).where(_Totals.id == 1)).one()
            counts = session.exec(
                select(_Message.kind, func.count()).group_by(col(_Message.kind))
            ).all()
            oldest = session.exec(select(func.min(_Message.created_at_s))).one()
            return OutboxStats(
                depth=totals.messages,
                size_bytes=totals.size_bytes,
                by_kind={k: dict(counts).get(k.value, 0) for k in OutboxKind},
                oldest_created_at=None if oldest is None else _utc(oldest),
                dropped_telemetry=totals.dropped_telemetry,
            )


def _chunks(message_ids: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for message_id in message_ids:
        chunk.append(message_id)
        if len(chunk) == _IDS_PER_STATEMENT:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _utc(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


def _item(row: _Message) -> OutboxItem:
    assert row.seq is not None  # a stored row always has its primary key
    return OutboxItem(
        seq=row.seq,
        message_id=row.message_id,
        topic=row.topic,
        payload=row.payload,
        kind=OutboxKind(row.kind),
        created_at=_utc(row.created_at_s),
        attempts=row.attempts,
    )
