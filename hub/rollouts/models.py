"""The rollout tables, on the fleet's metadata (hub/migrations/versions/0005 creates them).

rollouts          one row per rollout: its validated spec, state and current wave
rollout_waves     size, when opened, when fully notified, approval, the last gate values
rollout_devices   membership: the wave and draw position of each device, when notified,
                  the release it had before (what a rollback returns it to)
rollout_gates     each decision of a wave's gates, with every value against its threshold
audit_log         every transition and operator action: who, when, what, on what, why
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, String, Text
from sqlmodel import Field

from hub.fleet.models import ID_CHARS, FleetTable, UtcDateTime


def _time(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable))


def _rollout_fk(primary_key: bool = False) -> Any:
    return Field(
        sa_column=Column(
            Integer,
            ForeignKey("rollouts.id", ondelete="CASCADE"),
            primary_key=primary_key,
            nullable=False,
            index=not primary_key,
        )
    )


class Rollout(FleetTable, table=True):
    __tablename__ = "rollouts"

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=ID_CHARS, index=True)
    version: str = Field(max_length=64)
    baseline_version: str | None = Field(default=None, max_length=64)
    state: str = Field(max_length=32, index=True)
    wave: int = 0  # the current wave, from 0
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    seed: int = Field(sa_column=Column(Integer, nullable=False))
    created_by: str = Field(max_length=ID_CHARS)
    created_at: datetime = _time(nullable=False)
    updated_at: datetime = _time(nullable=False)
    waiting_for: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class RolloutWave(FleetTable, table=True):
    __tablename__ = "rollout_waves"

    rollout_id: int = _rollout_fk(primary_key=True)
    number: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    size: int
    opened_at: datetime | None = _time()
    notified_at: datetime | None = _time()  # every device of the wave notified
    approved_by: str | None = Field(default=None, max_length=ID_CHARS)
    approved_at: datetime | None = _time()
    override_by: str | None = Field(default=None, max_length=ID_CHARS)  # resumed past its gates
    passed_at: datetime | None = _time()
    gates: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, default=list)
    )  # the latest evaluation


class RolloutDevice(FleetTable, table=True):
    __tablename__ = "rollout_devices"
    # The driver's queries: a wave's members in draw order (migration 0009).
    __table_args__ = (Index(None, "rollout_id", "wave", "position"),)

    rollout_id: int = _rollout_fk(primary_key=True)
    device_id: str = Field(
        sa_column=Column(
            String(ID_CHARS),
            ForeignKey("devices.id", ondelete="CASCADE"),
            primary_key=True,
            index=True,
        )
    )
    wave: int
    position: int  # in the recorded draw
    previous_version: str | None = Field(default=None, max_length=64)
    notified_at: datetime | None = _time()
    rolled_back_at: datetime | None = _time()


class GateResult(FleetTable, table=True):
    __tablename__ = "rollout_gates"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = _rollout_fk()
    wave: int
    at: datetime = _time(nullable=False)
    verdict: str = Field(max_length=16)
    values: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))


class AuditEntry(FleetTable, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False, index=True))
    actor: str = Field(max_length=ID_CHARS)
    action: str = Field(max_length=64)
    object: str = Field(max_length=128, index=True)  # e.g. rollout/3
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    details: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict)
    )
