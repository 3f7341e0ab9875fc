"""Desired state: which release each device should run, signed for that device alone.

`assign` checks the device (enrolled, not revoked) and the release (listed by the TUF
repository, so the device will find and verify it), then stores a newly signed state with
the next sequence, unpublished. The state carries a maintenance window (the one given, else
the device's group's): the device activates only while it is open, even when it cannot
reach the hub. A window that never opens is refused (WindowError), since nothing under it
could ever activate. The running hub publishes unpublished states as retained
messages on each device's desired topic (`publish_pending`) and re-signs states before
they expire (`renew_expiring`), so a device away for longer still gets a valid one.

Writers may run at once (the CLI's `assign` beside the hub's renewal, in other processes):
each takes the devices' write lock before it reads a sequence (`_lock_for_write`), so no two
states are ever signed with the same sequence, which the device would refuse as a replay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, false, update
from sqlmodel import Session, col, select

from edge_agent.protocol import (
    DesiredRelease,
    DesiredState,
    MaintenanceWindow,
    check_opens,
    manifest_target,
)
from edge_agent.protocol.desired import sign_desired
from hub.db import session
from hub.fleet.models import DesiredRecord, Device, Group
from hub.fleet.registry import RegistryError

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(days=30)
# Re-signed when less than this share of its lifetime is left.
RENEW_WHEN_LEFT = 0.5


class NotListed(ValueError):
    """The release is not in the signed repository: no device could install it."""


def _now() -> datetime:
    return datetime.now(UTC)


def _lock_for_write(db: Session, device_ids: list[str] | None = None) -> None:
    """Hold the write lock of these devices' rows (all devices: None) until the transaction
    ends, so the sequences read after it are the newest and stay so.

    PostgreSQL: row locks, taken in id order so two writers cannot deadlock. SQLite has no
    row locks: a write statement makes the transaction a writer at once (the driver begins
    it there) and holds the database's one write lock; reads after it see every commit."""
    if db.get_bind().dialect.name == "sqlite":
        db.execute(update(Device).where(false()).values(id=Device.id))
        return
    query = select(Device.id).order_by(col(Device.id)).with_for_update()
    if device_ids is not None:
        query = query.where(col(Device.id).in_(device_ids))
    db.exec(query).all()


def _signed_record(
    device_id: str,
    sequence: int,
    models: dict[str, str],
    key: Ed25519PrivateKey,
    ttl: timedelta,
    now: datetime,
    window: MaintenanceWindow | None = None,
) -> DesiredRecord:
    state = DesiredState(
        window=window,
        device_id=device_id,
        sequence=sequence,
        issued_at=now,
        expires=now + ttl,
        models={
            model: DesiredRelease(version=version, manifest=manifest_target(model, version))
            for model, version in models.items()
        },
    )
    return DesiredRecord(
        device_id=device_id,
        sequence=sequence,
        models=dict(models),
        issued_at=state.issued_at,
        expires=state.expires,
        window=window.model_dump(mode="json") if window is not None else None,
        signed=sign_desired(state, key).model_dump_json(),
        published_at=None,
    )


# What a newly signed state replaces in a device's row (all but the key).
_REPLACED = ("sequence", "models", "issued_at", "expires", "window", "signed", "published_at")
_CHUNK = 500  # ids per IN (...) query: well below SQLite's limit on bound parameters

RowT = TypeVar("RowT", Device, DesiredRecord)


def _rows_by_id(db: Session, table: type[RowT], key: Any, ids: list[str]) -> dict[str, RowT]:
    """The rows of `table` whose `key` is in `ids`, by that key."""
    found: dict[str, RowT] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), _CHUNK):
        for row in db.exec(select(table).where(key.in_(unique[start : start + _CHUNK]))):
            found[row.id if isinstance(row, Device) else row.device_id] = row
    return found


def assign(
    engine: Engine,
    key: Ed25519PrivateKey,
    device_ids: list[str],
    model: str,
    version: str,
    *,
    listed: Callable[[str, str], bool],
    ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
    window: MaintenanceWindow | None = None,
) -> list[DesiredRecord]:
    """Ask each device to run `model` `version` (other models stay as assigned), activating
    inside `window` (None: the window of the device's group, if it has one). One
    transaction: every device gets it, or none does."""
    at = now or _now()
    if window is not None:
        check_opens(window, at)
    if not listed(model, version):
        raise NotListed(
            f"{model} {version} is not a published release: import it with `edge-hub model "
            "import` first (`edge-hub model list` shows what is published)"
        )
    records = []
    group_windows: dict[str, MaintenanceWindow | None] = {}
    # no_autoflush, rows read in chunks: a get() per device flushed the previous device's
    # row first, and a wave of 10,000 devices took 20-30 s of single-row statements.
    with session(engine) as db, db.no_autoflush:
        _lock_for_write(db, device_ids)
        devices = _rows_by_id(db, Device, col(Device.id), device_ids)
        currents = _rows_by_id(db, DesiredRecord, col(DesiredRecord.device_id), device_ids)
        for device_id in device_ids:
            device = devices.get(device_id)
            if device is None:
                raise RegistryError(f"no device {device_id!r}")
            if device.revoked_at is not None:
                raise RegistryError(f"device {device_id} is revoked")
            current = currents.get(device_id)
            models = {**(current.models if current else {}), model: version}
            sequence = current.sequence + 1 if current else 1
            applied = window or _group_window(db, device.group, group_windows, at)
            record = _signed_record(device_id, sequence, models, key, ttl, at, applied)
            if current is None:
                db.add(record)
                currents[device_id] = record
            else:  # the row of this device, replaced
                for name in _REPLACED:
                    setattr(current, name, getattr(record, name))
                record = current
            records.append(record)
    return records


def stored_window(value: dict[str, object] | None) -> MaintenanceWindow | None:
    """A window as stored in a JSON column (a group's, a desired state's)."""
    return None if value is None else MaintenanceWindow.model_validate(value)


def _group_window(
    db: Session, group: str | None, cache: dict[str, MaintenanceWindow | None], at: datetime
) -> MaintenanceWindow | None:
    if group is None:
        return None
    if group not in cache:
        row = db.get(Group, group)
        window = stored_window(row.window) if row is not None else None
        if window is not None:
            check_opens(window, at)  # stored when it opened; a cron may have run out since
        cache[group] = window
    return cache[group]


def set_group_window(
    engine: Engine, group: str, window: MaintenanceWindow | None, *, now: datetime | None = None
) -> Group:
    """Store `group`'s maintenance window (None: none), used by later assignments of its
    devices. WindowError when it never opens; RegistryError for an unknown group."""
    if window is not None:
        check_opens(window, now or _now())
    with session(engine) as db:
        row = db.get(Group, group)
        if row is None:
            raise RegistryError(f"no group {group!r}: create it with `edge-hub group create`")
        row.window = window.model_dump(mode="json") if window is not None else None
        db.add(row)
        return row


def pending(engine: Engine) -> list[DesiredRecord]:
    """Signed states the broker does not hold yet, of devices that are not revoked."""
    with session(engine) as db:
        query = (
            select(DesiredRecord)
            .join(Device, col(Device.id) == col(DesiredRecord.device_id))
            .where(col(DesiredRecord.published_at).is_(None), col(Device.revoked_at).is_(None))
            .order_by(col(DesiredRecord.device_id))
        )
        return list(db.exec(query).all())


def mark_all_unpublished(engine: Engine) -> int:
    """Every current state counts as not on the broker (publish them all again); the
    number of states."""
    with session(engine) as db:
        result = db.execute(
            update(DesiredRecord)
            .where(col(DesiredRecord.published_at).is_not(None))
            .values(published_at=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def mark_published(engine: Engine, device_id: str, sequence: int) -> None:
    """Record the broker's acknowledgement, unless a newer state was signed meanwhile."""
    with session(engine) as db:
        record = db.get(DesiredRecord, device_id)
        if record is not None and record.sequence == sequence:
            record.published_at = _now()
            db.add(record)


def mark_published_many(engine: Engine, published: list[tuple[str, int]]) -> None:
    """`mark_published` for many (device id, sequence) pairs, in one transaction."""
    if not published:
        return
    at = _now()
    with session(engine) as db:
        for device_id, sequence in published:
            db.execute(
                update(DesiredRecord)
                .where(
                    col(DesiredRecord.device_id) == device_id,
                    col(DesiredRecord.sequence) == sequence,
                )
                .values(published_at=at)
            )


def renew_expiring(
    engine: Engine,
    key: Ed25519PrivateKey,
    *,
    ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
) -> list[str]:
    """Re-sign (next sequence, same releases) every state with less than half its life
    left; they are published again. Returns the device ids."""
    at = now or _now()
    renewed = []
    with session(engine) as db:
        _lock_for_write(db)
        for current in db.exec(select(DesiredRecord)).all():
            lifetime = current.expires - current.issued_at
            if current.expires - at > lifetime * RENEW_WHEN_LEFT:
                continue
            db.merge(
                _signed_record(
                    current.device_id,
                    current.sequence + 1,
                    current.models,
                    key,
                    ttl,
                    at,
                    stored_window(current.window),
                )
            )
            renewed.append(current.device_id)
    if renewed:
        log.info("re-signed desired state of %d devices before it expires", len(renewed))
    return renewed
