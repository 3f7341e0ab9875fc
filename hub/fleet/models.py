"""The hub's fleet tables: devices, groups, the latest reported state, install events, and
every message taken in (its id is the key that makes ingest idempotent).

Times are stored in UTC. `UtcDateTime` gives aware datetimes back on every database
(SQLite keeps no time zone), so comparisons never mix naive and aware values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import registry
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

ID_CHARS = 64  # device ids and group names (edge_agent.protocol.topics.NAME_MAX_CHARS)
MESSAGE_ID_CHARS = 36  # a canonical UUID4


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the hub stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The fleet's own registry: its metadata holds exactly the fleet tables, whatever else in
# the process (the agent's outbox) uses SQLModel.
_registry = registry(
    metadata=MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
)


class FleetTable(SQLModel, registry=_registry):
    pass


METADATA: MetaData = FleetTable.metadata


def _time(nullable: bool = True, *, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable, index=index))


def _device_fk() -> Any:
    return Field(
        sa_column=Column(
            String(ID_CHARS), ForeignKey("devices.id", ondelete="CASCADE"), nullable=False
        )
    )


class Group(FleetTable, table=True):
    __tablename__ = "groups"

    name: str = Field(sa_column=Column(String(ID_CHARS), primary_key=True))
    created_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    # The group's maintenance window (edge_agent.protocol.MaintenanceWindow as JSON), put
    # into every desired state assigned to its devices; None: activate at once.
    window: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Device(FleetTable, table=True):
    __tablename__ = "devices"

    id: str = Field(sa_column=Column(String(ID_CHARS), primary_key=True))
    group: str | None = Field(
        default=None,
        sa_column=Column(
            String(ID_CHARS), ForeignKey("groups.name", ondelete="SET NULL"), index=True
        ),
    )
    tags: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict)
    )
    enrolled_at: datetime | None = _time()
    revoked_at: datetime | None = _time()
    # When the device last spoke: the newest `sent_at` of its messages (they may wait days
    # in its outbox), so a late old message never moves it back.
    last_seen: datetime | None = _time(index=True)


class ReportedModelState(FleetTable, table=True):
    """The latest reported state of one model on one device."""

    __tablename__ = "reported_state"

    device_id: str = Field(
        sa_column=Column(
            String(ID_CHARS),
            ForeignKey("devices.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    model: str = Field(sa_column=Column(String(ID_CHARS), primary_key=True))
    active: str | None = Field(default=None, max_length=64)
    previous: str | None = Field(default=None, max_length=64)
    pending: str | None = Field(default=None, max_length=64)
    floor: str | None = Field(default=None, max_length=64)
    phase: str = Field(max_length=32)
    last_result: str | None = Field(default=None, max_length=32)
    last_error: str | None = Field(default=None, max_length=2000)
    # Why the device's user holds this release back (a pinned or deferred agent update).
    held: str | None = Field(default=None, max_length=2000)
    agent_version: str = Field(max_length=64)
    message_id: str = Field(max_length=MESSAGE_ID_CHARS)
    updated_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class InstallEventRecord(FleetTable, table=True):
    __tablename__ = "install_events"
    # A rollout wave's results look up each member's events of one release (migration 0009).
    __table_args__ = (Index(None, "device_id", "model", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=MESSAGE_ID_CHARS, unique=True)
    device_id: str = _device_fk()
    model: str = Field(max_length=ID_CHARS)
    version: str = Field(max_length=64)
    event: str = Field(max_length=32)
    from_version: str | None = Field(default=None, max_length=64)
    attempt: int = 1
    error: str | None = Field(default=None, max_length=2000)
    at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False, index=True))


class ReceivedMessage(FleetTable, table=True):
    """Every accepted message, once: a redelivered message finds its id here."""

    __tablename__ = "received_messages"

    message_id: str = Field(sa_column=Column(String(MESSAGE_ID_CHARS), primary_key=True))
    device_id: str | None = Field(default=None, max_length=ID_CHARS, index=True)
    kind: str = Field(max_length=32)
    sent_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    received_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class DesiredRecord(FleetTable, table=True):
    """The desired state the hub signed for a device: the newest one only (its sequence
    only grows). `published_at` is set once the broker has the retained message; a row
    without it is published by the running hub."""

    __tablename__ = "desired_states"

    device_id: str = Field(
        sa_column=Column(
            String(ID_CHARS), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
        )
    )
    sequence: int
    models: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict)
    )  # model -> version
    issued_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    expires: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False, index=True))
    signed: str = Field(sa_column=Column(Text, nullable=False))  # the SignedDesired JSON
    # The maintenance window it carries (JSON), kept so a renewal signs it again.
    window: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    published_at: datetime | None = _time()
