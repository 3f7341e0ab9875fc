"""Operator actions on a rollout, each audited with its actor: approve (a second operator,
not the creator), pause, resume, abort, rollback (a reason is required for the last three
and for pause). Resume with `override` lets the current wave pass its gates (audited)."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from hub.db import session
from hub.rollouts import store
from hub.rollouts.machine import Event, State, next_state
from hub.rollouts.models import RolloutWave
from hub.rollouts.releases import ReleaseCheck
from hub.rollouts.revert import revert


class ActionRefused(ValueError):
    """An action this operator may not take now; the message says why."""


def _reason(reason: str | None, action: str) -> str:
    if reason is None or not reason.strip():
        raise ActionRefused(f"{action} needs a reason (--reason TEXT): the audit log keeps it")
    return reason.strip()


def approve(engine: Engine, rollout_id: int, actor: str, reason: str | None = None) -> State:
    with session(engine) as db:
        rollout = store.lock(db, rollout_id)
        if actor == rollout.created_by:
            raise ActionRefused(
                f"{actor} created rollout {rollout_id}: a second operator must approve it"
            )
        next_state(State(rollout.state), Event.APPROVE)  # refuses a wrong state first
        wave = db.get(RolloutWave, (rollout_id, rollout.wave))
        assert wave is not None
        wave.approved_by, wave.approved_at = actor, store.now()
        db.add(wave)
        rollout.waiting_for = None
        return store.transition(
            db, rollout, Event.APPROVE, actor, reason=reason, details={"approved_wave": wave.number}
        )


def pause(engine: Engine, rollout_id: int, actor: str, reason: str | None) -> State:
    why = _reason(reason, "pause")
    with session(engine) as db:
        rollout = store.lock(db, rollout_id)
        state = store.transition(db, rollout, Event.PAUSE, actor, reason=why)
        rollout.waiting_for = f"paused by {actor}: {why}"
        return state


def resume(
    engine: Engine, rollout_id: int, actor: str, reason: str | None, *, override: bool = False
) -> State:
    """Back to running: the gates of the current wave are evaluated again, unless
    `override` (which needs a reason) lets the wave pass them."""
    with session(engine) as db:
        rollout = store.lock(db, rollout_id)
        details: dict[str, object] = {}
        if override:
            why = _reason(reason, "resume --override")
            wave = db.get(RolloutWave, (rollout_id, rollout.wave))
            assert wave is not None
            next_state(State(rollout.state), Event.RESUME)
            wave.override_by = actor
            db.add(wave)
            details = {"override_wave": wave.number}
            reason = why
        rollout.waiting_for = None
        return store.transition(db, rollout, Event.RESUME, actor, reason=reason, details=details)


def abort(engine: Engine, rollout_id: int, actor: str, reason: str | None) -> State:
    """Stop: no more devices are notified; those notified keep their new state."""
    why = _reason(reason, "abort")
    with session(engine) as db:
        rollout = store.lock(db, rollout_id)
        rollout.waiting_for = None
        return store.transition(db, rollout, Event.ABORT, actor, reason=why)


def rollback(
    engine: Engine,
    rollout_id: int,
    actor: str,
    reason: str | None,
    key: Callable[[], Ed25519PrivateKey],
    releases: ReleaseCheck,
) -> State:
    """Every notified device back to its previous release, then rolled_back."""
    why = _reason(reason, "rollback")
    rollout = store.get(engine, rollout_id)
    next_state(State(rollout.state), Event.ROLLBACK)  # refuse before signing anything
    done = revert(engine, key, releases, rollout, None, store.now())
    with session(engine) as db:
        rollout = store.lock(db, rollout_id)
        rollout.waiting_for = None
        return store.transition(db, rollout, Event.ROLLBACK, actor, reason=why, details=done)
