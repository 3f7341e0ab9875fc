"""Rolling devices back: their desired state returns to the release they had before the
rollout notified them (recorded per device when the rollout was created).

Signing happens before anything is marked, and marking skips devices already rolled back,
so a crash in between only means the next try signs those states once more. A device the
rollout found without an earlier release of the model, whose earlier release is no longer
listed, or assigned another release since (an operator moved it on), keeps its state; the
details say which.

Agents keep a version floor and refuse any older release, except through a signed rollback
statement: the reverted states name the rollout's release as rolled back from, so a device
that already activated it re-activates the version it kept (edge_agent.updates.rollback)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlmodel import col, select

from hub.db import session
from hub.fleet import desired
from hub.fleet.models import Device
from hub.rollouts import store
from hub.rollouts.models import Rollout, RolloutDevice
from hub.rollouts.releases import ReleaseCheck


def revert(
    engine: Engine,
    key: Callable[[], Ed25519PrivateKey],
    releases: ReleaseCheck,
    rollout: Rollout,
    wave: int | None,
    at: datetime,
) -> dict[str, Any]:
    """Revert the notified devices of `wave` (None: of every wave); returns what was done."""
    with session(engine) as db:
        query = (
            select(RolloutDevice)
            .join(Device, col(Device.id) == col(RolloutDevice.device_id))
            .where(
                col(RolloutDevice.rollout_id) == rollout.id,
                col(RolloutDevice.notified_at).is_not(None),
                col(RolloutDevice.rolled_back_at).is_(None),
                col(Device.revoked_at).is_(None),
            )
        )
        if wave is not None:
            query = query.where(col(RolloutDevice.wave) == wave)
        members = list(db.exec(query).all())
        assigned = store.previous_versions(db, (m.device_id for m in members), rollout.model)
    by_version: dict[str, list[str]] = defaultdict(list)
    kept: dict[str, str] = {}
    signed_before: list[str] = []
    for member in members:
        previous = member.previous_version
        if previous is None:
            kept[member.device_id] = "no earlier release of the model"
            continue
        now_assigned = assigned[member.device_id]
        if now_assigned == previous:  # signed by a try that crashed before marking it
            signed_before.append(member.device_id)
            continue
        if now_assigned != rollout.version:  # moved on since: not this rollout's to undo
            kept[member.device_id] = f"assigned {now_assigned} since, not {rollout.version}"
            continue
        problem = releases(rollout.model, previous)
        if problem is not None:
            kept[member.device_id] = problem
            continue
        by_version[previous].append(member.device_id)
    for version, device_ids in sorted(by_version.items()):
        desired.assign_many(
            engine, key(), sorted(device_ids), rollout.model, version,
            listed=lambda _m, _v: True, rolled_back_from=rollout.version,
        )  # fmt: skip
    reverted = {d for ids in by_version.values() for d in ids} | set(signed_before)
    with session(engine) as db:
        for member in members:
            if member.device_id in reverted:
                row = db.get(RolloutDevice, (member.rollout_id, member.device_id))
                if row is not None and row.rolled_back_at is None:
                    row.rolled_back_at = at
                    db.add(row)
    return {
        "reverted": {version: len(ids) for version, ids in by_version.items()},
        "kept": dict(list(kept.items())[:100]),
    }
