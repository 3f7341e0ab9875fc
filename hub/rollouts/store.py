"""Creating a rollout and moving it between states, in the database.

`create` checks what needs the database and the repository (the release is listed and not
revoked, the target holds devices, the waves fit it), then stores the rollout, its waves
and its drawn membership in one transaction, superseding older active rollouts of the same
model on the same devices (one active rollout per device and model). A refusal stores
nothing. `transition` is the one place a rollout's state changes; it writes the audit entry.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Engine, Table, func, insert, or_, update
from sqlmodel import Session, col, select

from hub.db import session
from hub.fleet.models import DesiredRecord, Device
from hub.rollouts import audit
from hub.rollouts.machine import ACTIVE, Event, State, next_state
from hub.rollouts.models import Rollout, RolloutDevice, RolloutWave
from hub.rollouts.plan import PlanError, draw, wave_sizes
from hub.rollouts.releases import ReleaseCheck
from hub.rollouts.spec import RolloutSpec, Target

SEED_BITS = 31  # fits every database's INTEGER
_CHUNK = 500  # ids per IN (...): well below SQLite's limit on bound parameters
ROLLOUT_DEVICES: Table = RolloutDevice.__table__  # type: ignore[attr-defined]


class RolloutRefused(ValueError):
    """Input the rollout cannot be made from: `field` names what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NoRollout(LookupError):
    pass


def now() -> datetime:
    return datetime.now(UTC)


def object_name(rollout_id: int | None) -> str:
    return f"rollout/{rollout_id}"


def lock(db: Session, rollout_id: int) -> Rollout:
    """The rollout, its row write-locked until the transaction ends (PostgreSQL: a row
    lock; SQLite: the database's write lock), so the driver and operators take turns."""
    db.execute(update(Rollout).where(col(Rollout.id) == rollout_id).values(id=Rollout.id))
    rollout = db.get(Rollout, rollout_id, populate_existing=True)
    if rollout is None:
        raise NoRollout(f"no rollout {rollout_id}: `edge-hub rollout list` shows them")
    return rollout


def transition(
    db: Session,
    rollout: Rollout,
    event: Event,
    actor: str,
    *,
    reason: str | None = None,
    details: dict[str, object] | None = None,
) -> State:
    """Apply `event` (IllegalTransition if the state does not allow it), audited."""
    source = State(rollout.state)
    target = next_state(source, event)
    rollout.state = target
    rollout.updated_at = now()
    db.add(rollout)
    audit.record(
        db,
        actor,
        str(event),
        object_name(rollout.id),
        reason=reason,
        details={"from": str(source), "to": str(target), "wave": rollout.wave, **(details or {})},
    )
    return target


def target_devices(db: Session, target: Target, *, not_in_rollout: int | None = None) -> list[str]:
    """Enrolled, unrevoked devices in the group, or carrying every tag, or named; with
    `not_in_rollout`, only those that are not members of that rollout yet."""
    named = set(target.devices)
    query = select(Device.id, Device.group, Device.tags).where(
        col(Device.revoked_at).is_(None), col(Device.enrolled_at).is_not(None)
    )
    if not target.tags and not named:  # a group alone: filtered in SQL
        query = query.where(col(Device.group) == target.group)
    if not_in_rollout is not None:
        member = select(RolloutDevice.device_id).where(
            col(RolloutDevice.rollout_id) == not_in_rollout,
            col(RolloutDevice.device_id) == col(Device.id),
        )
        query = query.where(~member.exists())
    found = []
    for device_id, group, tags in db.exec(query).all():
        in_group = target.group is not None and group == target.group
        tagged = bool(target.tags) and all(
            (tags or {}).get(key) == value for key, value in target.tags.items()
        )
        if in_group or tagged or device_id in named:
            found.append(device_id)
    return sorted(found)


def member_count(db: Session, rollout_id: int) -> int:
    query = select(func.count()).where(col(RolloutDevice.rollout_id) == rollout_id)
    return int(db.exec(query).one())


def held_by_other_rollouts(
    db: Session, model: str, device_ids: list[str], rollout_id: int, *, newer_too: bool = False
) -> set[str]:
    """Which of `device_ids` another active rollout of `model` has as members; with
    `newer_too`, also any rollout of it created after `rollout_id`, active or not."""
    held: ColumnElement[bool] = col(Rollout.state).in_([str(s) for s in ACTIVE])
    if newer_too:
        held = or_(held, col(Rollout.id) > rollout_id)
    query = (
        select(RolloutDevice.device_id)
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(
            col(Rollout.model) == model,
            col(Rollout.id) != rollout_id,
            held,
            col(RolloutDevice.device_id).in_(device_ids),
        )
    )
    return set(db.exec(query).all())


def mark_notified(db: Session, rollout_id: int, device_ids: list[str], at: datetime) -> None:
    """These members were sent the release at `at` (kept if they were already)."""
    for start in range(0, len(device_ids), _CHUNK):
        db.execute(
            update(RolloutDevice)
            .where(
                col(RolloutDevice.rollout_id) == rollout_id,
                col(RolloutDevice.device_id).in_(device_ids[start : start + _CHUNK]),
                col(RolloutDevice.notified_at).is_(None),
            )
            .values(notified_at=at)
        )


def _check_named(db: Session, target: Target) -> None:
    for device_id in target.devices:
        device = db.get(Device, device_id)
        if device is None or device.enrolled_at is None:
            raise RolloutRefused("target.devices", f"no enrolled device {device_id!r}")
        if device.revoked_at is not None:
            raise RolloutRefused("target.devices", f"device {device_id} is revoked")


def previous_versions(db: Session, device_ids: Iterable[str], model: str) -> dict[str, str | None]:
    ids = list(device_ids)
    by_device: dict[str, str | None] = {}
    for start in range(0, len(ids), _CHUNK):
        query = select(DesiredRecord.device_id, DesiredRecord.models).where(
            col(DesiredRecord.device_id).in_(ids[start : start + _CHUNK])
        )
        by_device.update((device_id, models.get(model)) for device_id, models in db.exec(query))
    return {device_id: by_device.get(device_id) for device_id in ids}


def create(engine: Engine, spec: RolloutSpec, actor: str, releases: ReleaseCheck) -> Rollout:
    problem = releases(spec.model, spec.version)
    if problem is not None:
        raise RolloutRefused("version", problem)
    seed = spec.seed if spec.seed is not None else secrets.randbits(SEED_BITS)
    at = now()
    with session(engine) as db:
        if (
            spec.target.group is not None
            and not db.exec(
                select(Device.id).where(col(Device.group) == spec.target.group).limit(1)
            ).first()
        ):
            raise RolloutRefused("target.group", f"group {spec.target.group!r} has no devices")
        _check_named(db, spec.target)
        devices = target_devices(db, spec.target)
        try:
            sizes = wave_sizes(len(devices), spec.wave_percent, spec.wave_counts)
        except PlanError as exc:
            raise RolloutRefused(exc.field, str(exc)) from None
        previous = previous_versions(db, devices, spec.model)
        baseline = spec.baseline_version or _most_common(previous.values(), spec.version)
        rollout = Rollout(
            model=spec.model,
            version=spec.version,
            baseline_version=baseline,
            state=State.CREATED,
            spec=spec.model_dump(mode="json"),
            seed=seed,
            created_by=actor,
            created_at=at,
            updated_at=at,
        )
        db.add(rollout)
        db.flush()
        assert rollout.id is not None
        _supersede(db, rollout, devices)
        order = draw(devices, seed)
        members: list[dict[str, object]] = []
        start = 0
        for number, size in enumerate(sizes):
            db.add(RolloutWave(rollout_id=rollout.id, number=number, size=size))
            members += [
                {
                    "rollout_id": rollout.id,
                    "device_id": order[position],
                    "wave": number,
                    "position": position,
                    "previous_version": previous[order[position]],
                }
                for position in range(start, start + size)
            ]
            start += size
        db.flush()
        # One executemany statement: an ORM object per member cost 0.3 ms each.
        if members:
            db.connection().execute(insert(ROLLOUT_DEVICES), members)
        audit.record(
            db,
            actor,
            "create",
            object_name(rollout.id),
            details={"spec": rollout.spec, "seed": seed, "waves": sizes, "baseline": baseline},
            at=at,
        )
        return rollout


def _most_common(versions: Iterable[str | None], new: str) -> str | None:
    counted = Counter(v for v in versions if v is not None and v != new)
    return counted.most_common(1)[0][0] if counted else None


def _supersede(db: Session, newer: Rollout, devices: list[str]) -> None:
    """Older active rollouts of the same model that hold any of these devices end here."""
    older_ids = db.exec(
        select(RolloutDevice.rollout_id)
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(
            col(Rollout.model) == newer.model,
            col(Rollout.state).in_([str(s) for s in ACTIVE]),
            col(Rollout.id) != newer.id,
            col(RolloutDevice.device_id).in_(devices),
        )
        .distinct()
    ).all()
    for older_id in older_ids:
        older = lock(db, older_id)
        transition(
            db,
            older,
            Event.SUPERSEDE,
            newer.created_by,
            reason=f"superseded by {object_name(newer.id)} ({newer.model} {newer.version})",
            details={"superseded_by": newer.id},
        )
        older.waiting_for = None


def get(engine: Engine, rollout_id: int) -> Rollout:
    with session(engine) as db:
        rollout = db.get(Rollout, rollout_id)
        if rollout is None:
            raise NoRollout(f"no rollout {rollout_id}: `edge-hub rollout list` shows them")
        return rollout


def list_rollouts(engine: Engine, active_only: bool = False) -> list[Rollout]:
    with session(engine) as db:
        query = select(Rollout).order_by(col(Rollout.id))
        if active_only:
            query = query.where(col(Rollout.state).in_([str(s) for s in ACTIVE]))
        return list(db.exec(query).all())


def spec_of(rollout: Rollout) -> RolloutSpec:
    return RolloutSpec.model_validate(rollout.spec)
