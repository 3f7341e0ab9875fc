"""Revoking a device, one function for the command line and the console: its certificates go
on the broker's revocation list (a running hub disconnects it within seconds), its download
token and any unused enrollment token stop working, and the registry marks it revoked."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from hub.fleet import registry
from hub.fleet.authority import FleetAuthority


@dataclass(frozen=True)
class DeviceRevocation:
    device_id: str
    certificates: int  # newly put on the revocation list
    enrollment_tokens: int  # unused ones voided


def revoke_device(authority: FleetAuthority, engine: Engine, device_id: str) -> DeviceRevocation:
    """RegistryError for an unknown device, before anything changes."""
    registry.get_device(engine, device_id)
    # A device that never finished enrolling holds no certificate: nothing to list.
    issued = authority.ca.issued_to(device_id)
    count = authority.ca.revoke(device_id) if issued else 0
    cancelled = authority.enrollment_tokens.cancel(device_id)
    authority.downloads.revoke(device_id)
    registry.mark_revoked(engine, device_id)
    return DeviceRevocation(device_id, count, cancelled)
