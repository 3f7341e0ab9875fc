"""What the hub's database knows of a site: its devices and the versions they hold.

A bundle carries only the chunks some named device lacks; a device holds the chunks of its
active and previous versions as it last reported them. A device whose store lost them
since then fails its import with the missing chunk named; `usb export --full` carries all.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import col, select

from hub.db import session
from hub.fleet.models import DesiredRecord, Device, ReportedModelState


def site_devices(engine: Engine, devices: list[str], groups: list[str]) -> list[str]:
    """The named devices plus every device of the named groups; unknown names refused."""
    found = set()
    with session(engine) as db:
        for device_id in devices:
            if db.get(Device, device_id) is None:
                raise ValueError(f"no device {device_id!r} in the hub database")
            found.add(device_id)
        for group in groups:
            members = db.exec(select(Device.id).where(col(Device.group) == group)).all()
            if not members:
                raise ValueError(f"group {group!r} has no devices in the hub database")
            found.update(members)
    return sorted(found)


def held_versions(engine: Engine, device_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """device id -> (model, version) it last reported as active or previous."""
    held: dict[str, list[tuple[str, str]]] = {device: [] for device in device_ids}
    with session(engine) as db:
        rows = db.exec(
            select(ReportedModelState).where(col(ReportedModelState.device_id).in_(device_ids))
        ).all()
        for row in rows:
            for version in (row.active, row.previous):
                if version:
                    held[row.device_id].append((row.model, version))
    return held


def desired_states(engine: Engine, device_ids: list[str]) -> dict[str, bytes]:
    """device id -> its newest signed desired state (SignedDesired JSON), where it has one."""
    with session(engine) as db:
        rows = db.exec(
            select(DesiredRecord).where(col(DesiredRecord.device_id).in_(device_ids))
        ).all()
        return {row.device_id: row.signed.encode() for row in rows}
