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

import base64
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, Row, Select, Table, bindparam, false, insert, update
from sqlmodel import Session, col, select

from edge_agent.protocol import (
    DesiredRelease,
    DesiredState,
    MaintenanceWindow,
    SignedDesired,
    check_opens,
    manifest_target,
)
from edge_agent.protocol.desired import canonical_json, key_id, sign_desired, signed_part
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
    rollbacks: dict[str, str] | None = None,
) -> DesiredRecord:
    state = DesiredState(
        window=window,
        rollbacks=rollbacks or {},
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


_CHUNK = 500  # ids per IN (...) query: well below SQLite's limit on bound parameters


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
    rolled_back_from: str | None = None,
) -> list[DesiredRecord]:
    """Ask each device to run `model` `version` (other models stay as assigned), activating
    inside `window` (None: the window of the device's group, if it has one). One
    transaction: every device gets it, or none does. The stored states, as records.

    `rolled_back_from`: this assignment rolls `model` back from that release; the signed
    statement lets a device that activated it go below its floor to its kept `version`."""
    rows = assign_many(
        engine, key, device_ids, model, version, listed=listed, ttl=ttl, now=now,
        window=window, rolled_back_from=rolled_back_from,
    )  # fmt: skip
    return [DesiredRecord(**row) for row in rows]


def assign_many(
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
    rolled_back_from: str | None = None,
) -> list[dict[str, Any]]:
    """`assign` for a wave of thousands: the stored states as column values, no ORM objects.

    Rows are read in chunks as plain tuples and written with one executemany statement
    each for new and replaced states: ORM objects, a get() per device and an UPDATE per row
    made a wave of 10,000 devices take 7-20 s, where signing itself takes 0.5 s."""
    at = now or _now()
    if window is not None:
        check_opens(window, at)
    if not listed(model, version):
        raise NotListed(
            f"{model} {version} is not a published release: import it with `edge-hub model "
            "import` first (`edge-hub model list` shows what is published)"
        )
    ids = list(dict.fromkeys(device_ids))
    table = _DESIRED
    signer = _Signer(key, ttl, at)
    group_windows: dict[str, MaintenanceWindow | None] = {}
    new_rows: list[dict[str, Any]] = []
    replaced: list[dict[str, Any]] = []
    with session(engine) as db:
        _lock_for_write(db, ids)
        connection = db.connection()
        devices = _chunked(
            connection,
            select(_DEVICES.c.id, _DEVICES.c.group, _DEVICES.c.revoked_at),
            _DEVICES.c.id,
            ids,
        )
        currents = _chunked(
            connection,
            select(table.c.device_id, table.c.sequence, table.c.models, table.c.signed),
            table.c.device_id,
            ids,
        )
        for device_id in ids:
            device = devices.get(device_id)
            if device is None:
                raise RegistryError(f"no device {device_id!r}")
            if device.revoked_at is not None:
                raise RegistryError(f"device {device_id} is revoked")
            current = currents.get(device_id)
            models = {**(current.models if current else {}), model: version}
            sequence = current.sequence + 1 if current else 1
            applied = window or _group_window(db, device.group, group_windows, at)
            rollbacks = rollbacks_of(current.signed) if current else {}
            rollbacks.pop(model, None)  # a new assignment of the model ends its rollback
            if rolled_back_from is not None:
                rollbacks[model] = rolled_back_from
            row = signer.row(device_id, sequence, models, applied, rollbacks)
            (replaced if current else new_rows).append(row)
        if new_rows:
            connection.execute(insert(table), new_rows)
        if replaced:
            connection.execute(
                update(table).where(table.c.device_id == bindparam("b_device_id")),
                [{"b_device_id": row["device_id"], **row} for row in replaced],
            )
    return _in_order(ids, new_rows + replaced)


def _in_order(ids: list[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {row["device_id"]: row for row in rows}
    return [by_id[device_id] for device_id in ids]


_DESIRED: Table = DesiredRecord.__table__  # type: ignore[attr-defined]
_DEVICES: Table = Device.__table__  # type: ignore[attr-defined]


def _chunked(
    connection: Connection, query: Select[Any], key: Any, ids: list[str]
) -> dict[str, Row[Any]]:
    """The rows of `query` whose `key` is one of `ids` (read in chunks), by that key."""
    found: dict[str, Row[Any]] = {}
    for start in range(0, len(ids), _CHUNK):
        for row in connection.execute(query.where(key.in_(ids[start : start + _CHUNK]))):
            found[row[0]] = row
    return found


class _Signer:
    """Signs many states issued at one time: the part every device shares (releases,
    window, times) is built and validated once per distinct content, then each device's
    copy gets its id and sequence and its own signature."""

    def __init__(self, key: Ed25519PrivateKey, ttl: timedelta, at: datetime) -> None:
        self.key = key
        self.key_id = key_id(key.public_key())
        self.issued_at, self.expires = at, at + ttl
        self._shared: dict[tuple[Any, ...], dict[str, Any]] = {}

    def _shared_part(
        self,
        device_id: str,
        models: dict[str, str],
        window: MaintenanceWindow | None,
        rollbacks: dict[str, str],
    ) -> dict[str, Any]:
        cache_key = (
            tuple(sorted(models.items())),
            window.model_dump_json() if window else None,
            tuple(sorted(rollbacks.items())),
        )
        shared = self._shared.get(cache_key)
        if shared is None:
            state = DesiredState(
                window=window,
                rollbacks=rollbacks,
                device_id=device_id,
                sequence=1,
                issued_at=self.issued_at,
                expires=self.expires,
                models={
                    m: DesiredRelease(version=v, manifest=manifest_target(m, v))
                    for m, v in models.items()
                },
            )
            shared = signed_part(state)
            self._shared[cache_key] = shared
        return shared

    def row(
        self,
        device_id: str,
        sequence: int,
        models: dict[str, str],
        window: MaintenanceWindow | None,
        rollbacks: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        shared = self._shared_part(device_id, models, window, rollbacks or {})
        signed = {**shared, "device_id": device_id}
        signed["sequence"] = sequence
        signature = base64.b64encode(self.key.sign(canonical_json(signed))).decode()
        envelope = SignedDesired(signed=signed, key_id=self.key_id, signature=signature)
        return {
            "device_id": device_id,
            "sequence": sequence,
            "models": dict(models),
            "issued_at": self.issued_at,
            "expires": self.expires,
            "window": window.model_dump(mode="json") if window is not None else None,
            "signed": envelope.model_dump_json(),
            "published_at": None,
        }


def rollbacks_of(signed: str) -> dict[str, str]:
    """The rollback statements of a stored signed state, so a renewal or another model's
    assignment signs them again (a device offline meanwhile still gets its rollback)."""
    if '"rollbacks"' not in signed:  # most states: skip parsing the JSON
        return {}
    part = SignedDesired.model_validate_json(signed).signed.get("rollbacks") or {}
    return {str(model): str(version) for model, version in part.items()}


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


class Unpublished(NamedTuple):
    device_id: str
    sequence: int
    signed: str  # the SignedDesired JSON


def unpublished(engine: Engine) -> list[Unpublished]:
    """What `pending` holds, as the publisher needs it: plain tuples, no ORM objects (10,000
    of them cost 0.5-0.9 s to load)."""
    table = _DESIRED
    query = (
        select(table.c.device_id, table.c.sequence, table.c.signed)
        .join(_DEVICES, _DEVICES.c.id == table.c.device_id)
        .where(table.c.published_at.is_(None), _DEVICES.c.revoked_at.is_(None))
        .order_by(table.c.device_id)
    )
    with engine.connect() as connection:
        return [Unpublished(*row) for row in connection.execute(query)]


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
    """`mark_published` for many (device id, sequence) pairs: one executemany statement in
    one transaction (an ORM UPDATE per pair cost 0.8 ms each)."""
    if not published:
        return
    at = _now()
    table = _DESIRED
    statement = (
        update(table)
        .where(
            table.c.device_id == bindparam("b_device_id"),
            table.c.sequence == bindparam("b_sequence"),
        )
        .values(published_at=at)
    )
    with session(engine) as db:
        db.connection().execute(
            statement, [{"b_device_id": d, "b_sequence": s} for d, s in published]
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
                    rollbacks_of(current.signed),
                )
            )
            renewed.append(current.device_id)
    if renewed:
        log.info("re-signed desired state of %d devices before it expires", len(renewed))
    return renewed
