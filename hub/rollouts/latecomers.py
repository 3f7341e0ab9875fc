"""Devices that join a target after its rollout completed get the release it made current.

For each model and target, the newest completed rollout is what that target runs. A device
enrolled into the group, or tagged, later is signed that release (with the rollout's
maintenance window) and recorded as a member of the last wave, notified, so the audit log
says why it got it and the next step does not find it again. Skipped: devices in an active
rollout of the model or handled by a newer one, and devices already assigned this release
or a newer one (never a downgrade). A release revoked since is not signed to anyone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.version import Version
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from hub.db import session
from hub.fleet import desired
from hub.rollouts import audit, store
from hub.rollouts.machine import State
from hub.rollouts.models import Rollout, RolloutDevice, RolloutWave
from hub.rollouts.releases import ReleaseCheck

log = logging.getLogger(__name__)


def current_rollouts(db: Session) -> list[Rollout]:
    """The newest completed rollout per model and target, newest first."""
    query = (
        select(Rollout)
        .where(col(Rollout.state) == State.COMPLETED.value)
        .order_by(col(Rollout.id).desc())
    )
    seen: set[tuple[str, str]] = set()
    newest = []
    for rollout in db.exec(query).all():
        key = (rollout.model, json.dumps(rollout.spec.get("target"), sort_keys=True))
        if key not in seen:
            seen.add(key)
            newest.append(rollout)
    return newest


def latecomers(db: Session, rollout: Rollout) -> list[str]:
    """Target devices this completed rollout should still bring onto its release."""
    assert rollout.id is not None
    found = store.target_devices(db, store.spec_of(rollout).target, not_in_rollout=rollout.id)
    if not found:
        return []
    taken = store.held_by_other_rollouts(db, rollout.model, found, rollout.id, newer_too=True)
    wanted = Version(rollout.version)
    assigned = store.previous_versions(db, found, rollout.model)
    return [
        device_id
        for device_id in found
        if device_id not in taken
        and (assigned[device_id] is None or Version(assigned[device_id] or "0") < wanted)
    ]


def bring_on(
    engine: Engine,
    key: Callable[[], Ed25519PrivateKey],
    releases: ReleaseCheck,
    at: datetime,
) -> int:
    """Sign each completed rollout's release to its target's latecomers; how many."""
    brought = 0
    with session(engine) as db:
        current = current_rollouts(db)
    for rollout in current:
        # Found after the newer rollouts signed theirs: a device in two overlapping targets
        # is then theirs (and assigned their release), not signed this older one after it.
        with session(engine) as db:
            device_ids = latecomers(db, rollout)
        if not device_ids:
            continue
        problem = releases(rollout.model, rollout.version)
        if problem is not None:
            log.warning(
                "rollout %s: not signed to %d new devices: %s", rollout.id, len(device_ids), problem
            )
            continue
        spec = store.spec_of(rollout)
        with session(engine) as db:
            previous = store.previous_versions(db, device_ids, rollout.model)
        desired.assign_many(
            engine, key(), device_ids, rollout.model, rollout.version,
            listed=lambda _m, _v: True, window=spec.window, now=at,
        )  # fmt: skip
        _record(engine, rollout, device_ids, previous, at)
        brought += len(device_ids)
    return brought


def _record(
    engine: Engine,
    rollout: Rollout,
    device_ids: list[str],
    previous: dict[str, str | None],
    at: datetime,
) -> None:
    assert rollout.id is not None
    with session(engine) as db:
        last = db.exec(
            select(RolloutWave)
            .where(col(RolloutWave.rollout_id) == rollout.id)
            .order_by(col(RolloutWave.number).desc())
        ).first()
        assert last is not None
        position = store.member_count(db, rollout.id)
        for offset, device_id in enumerate(device_ids):
            db.add(
                RolloutDevice(
                    rollout_id=rollout.id, device_id=device_id, wave=last.number,
                    position=position + offset, previous_version=previous[device_id],
                    notified_at=at,
                )
            )  # fmt: skip
        last.size += len(device_ids)
        db.add(last)
        audit.record(
            db, audit.HUB_ACTOR, "devices_joined", store.object_name(rollout.id),
            details={
                "wave": last.number, "after": "completed", "devices": device_ids[:100],
                "count": len(device_ids),
            },
            at=at,
        )  # fmt: skip
