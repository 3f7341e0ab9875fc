"""The fleet registry: devices and groups in the hub database.

Devices appear here when they enroll (`enroll`) or when their first message is ingested;
`mark_revoked` is what revoking a device's certificate calls to record it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import col, select

from edge_agent.protocol.topics import check_name
from hub.db import session
from hub.fleet.models import Device, Group, InstallEventRecord, ReportedModelState


class RegistryError(LookupError):
    """An unknown device or group, or one that exists already."""


@dataclass(frozen=True)
class DeviceDetails:
    device: Device
    models: list[ReportedModelState]
    recent_events: list[InstallEventRecord]


def _now() -> datetime:
    return datetime.now(UTC)


def list_devices(engine: Engine, group: str | None = None) -> list[Device]:
    with session(engine) as db:
        query = select(Device).order_by(col(Device.id))
        if group is not None:
            query = query.where(col(Device.group) == group)
        return list(db.exec(query).all())


def get_device(engine: Engine, device_id: str) -> Device:
    with session(engine) as db:
        device = db.get(Device, device_id)
        if device is None:
            raise RegistryError(f"no device {device_id!r}")
        return device


def show_device(engine: Engine, device_id: str, events: int = 10) -> DeviceDetails:
    with session(engine) as db:
        device = db.get(Device, device_id)
        if device is None:
            raise RegistryError(f"no device {device_id!r}")
        models = db.exec(
            select(ReportedModelState)
            .where(col(ReportedModelState.device_id) == device_id)
            .order_by(col(ReportedModelState.model))
        ).all()
        recent = db.exec(
            select(InstallEventRecord)
            .where(col(InstallEventRecord.device_id) == device_id)
            .order_by(col(InstallEventRecord.at).desc(), col(InstallEventRecord.id).desc())
            .limit(events)
        ).all()
        return DeviceDetails(device, list(models), list(recent))


def enroll(
    engine: Engine,
    device_id: str,
    *,
    group: str | None = None,
    tags: Mapping[str, str] | None = None,
    at: datetime | None = None,
) -> Device:
    """Record an enrolled device (again: a re-enrollment clears a revocation)."""
    check_name(device_id)
    with session(engine) as db:
        if group is not None and db.get(Group, group) is None:
            raise RegistryError(f"no group {group!r}")
        device = db.get(Device, device_id) or Device(id=device_id)
        device.enrolled_at = at or _now()
        device.revoked_at = None
        if group is not None:
            device.group = group
        if tags is not None:
            device.tags = dict(tags)
        db.add(device)
        return device


def enroll_many(
    engine: Engine,
    device_ids: Sequence[str],
    *,
    group: str | None = None,
    tags: Mapping[str, str] | None = None,
    at: datetime | None = None,
) -> int:
    """Record many enrolled devices in one transaction (a simulated fleet: one commit, not
    one per device). Like `enroll` for each; how many were recorded."""
    for device_id in device_ids:
        check_name(device_id)
    when = at or _now()
    with session(engine) as db:
        if group is not None and db.get(Group, group) is None:
            raise RegistryError(f"no group {group!r}")
        for device_id in device_ids:
            device = db.get(Device, device_id) or Device(id=device_id)
            device.enrolled_at = when
            device.revoked_at = None
            if group is not None:
                device.group = group
            if tags is not None:
                device.tags = dict(tags)
            db.add(device)
    return len(device_ids)


def prepare(engine: Engine, device_id: str, *, group: str | None = None) -> Device:
    """Record a device about to enroll (an enrollment token was made for it)."""
    check_name(device_id)
    with session(engine) as db:
        if group is not None and db.get(Group, group) is None:
            raise RegistryError(f"no group {group!r}: create it with `edge-hub group create`")
        device = db.get(Device, device_id) or Device(id=device_id)
        if group is not None:
            device.group = group
        db.add(device)
        return device


def get_group(engine: Engine, name: str) -> Group:
    with session(engine) as db:
        group = db.get(Group, name)
        if group is None:
            raise RegistryError(f"no group {name!r}")
        return group


def mark_revoked(engine: Engine, device_id: str, at: datetime | None = None) -> Device:
    """Record that `device_id` was revoked (its certificate is no longer accepted)."""
    with session(engine) as db:
        device = db.get(Device, device_id)
        if device is None:
            raise RegistryError(f"no device {device_id!r}")
        device.revoked_at = at or _now()
        db.add(device)
        return device


def create_group(engine: Engine, name: str) -> Group:
    check_name(name, "group name")
    with session(engine) as db:
        if db.get(Group, name) is not None:
            raise RegistryError(f"group {name!r} exists already")
        group = Group(name=name, created_at=_now())
        db.add(group)
        return group


def list_groups(engine: Engine) -> list[Group]:
    with session(engine) as db:
        return list(db.exec(select(Group).order_by(col(Group.name))).all())


def add_to_group(engine: Engine, group: str, device_id: str) -> Device:
    """Put a device in `group` (a device is in one group at a time)."""
    with session(engine) as db:
        if db.get(Group, group) is None:
            raise RegistryError(f"no group {group!r}")
        device = db.get(Device, device_id)
        if device is None:
            raise RegistryError(f"no device {device_id!r}")
        device.group = group
        db.add(device)
        return device
