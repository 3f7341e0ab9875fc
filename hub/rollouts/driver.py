"""The rollout driver: one step of every active rollout, run by the hub's scheduler every
few seconds. Everything it knows is in the database, so a restarted hub (or another hub
process) goes on exactly where the last step left off.

A step of a rollout:
    created           -> running (start)
    running           open the current wave (or wait for a second operator's approval),
                      notify its devices as fast as pacing allows (signed desired state),
                      then -> waiting_gate once every device has it
    waiting_gate      evaluate the wave's gates; pass -> next wave or completed; fail ->
                      paused (or rolled back: on_failure = rollback); inconclusive -> paused
Devices that join the target meanwhile join the wave being notified, else the next one;
once a rollout completed, its target's latecomers get its release (hub.rollouts.latecomers).
Signing happens outside the rollout's lock (it takes the devices' lock itself), then the
result is recorded under it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from edge_agent.protocol.window import WindowError
from hub.db import session
from hub.fleet import desired
from hub.fleet.models import Device
from hub.rollouts import audit, latecomers, store
from hub.rollouts.gates import GateValue, Verdict, decide, health_gates, install_gates
from hub.rollouts.health import HealthQuery, aggregate
from hub.rollouts.machine import FINAL, Event, State
from hub.rollouts.models import GateResult, Rollout, RolloutDevice, RolloutWave
from hub.rollouts.plan import notify_budget
from hub.rollouts.releases import ReleaseCheck
from hub.rollouts.results import wave_results
from hub.rollouts.revert import revert
from hub.rollouts.spec import RolloutSpec

log = logging.getLogger(__name__)
HUB = audit.HUB_ACTOR
# Devices signed and committed per transaction: each committed chunk is pending for the
# desired-state publisher at once, so a wave of 10,000 reaches the broker while the rest
# is still being signed instead of after all of it (bench/rollout.py).
NOTIFY_CHUNK = 500


@dataclass
class Driver:
    engine: Engine
    key: Callable[[], Ed25519PrivateKey]  # the director key that signs desired state
    releases: ReleaseCheck
    health: HealthQuery
    clock: Callable[[], datetime] = field(default=store.now)
    # Called after each committed chunk of signed states: a publisher waiting for work.
    on_signed: Callable[[], None] = field(default=lambda: None)

    def step_all(self) -> None:
        """One step of each active rollout; one failing rollout does not stop the others."""
        for rollout in store.list_rollouts(self.engine, active_only=True):
            assert rollout.id is not None
            try:
                self.step(rollout.id)
            except Exception:
                log.exception("rollout %s: the step failed; the next one tries again", rollout.id)
        try:
            latecomers.bring_on(self.engine, self.key, self.releases, self.clock())
        except Exception:
            log.exception("devices that joined completed rollouts' targets: the next step retries")

    def step(self, rollout_id: int) -> State:
        at = self.clock()
        with session(self.engine) as db:
            rollout = store.lock(db, rollout_id)
            state = State(rollout.state)
            if state in FINAL or state in (State.PAUSED, State.WAITING_APPROVAL):
                return state
            if state is State.CREATED:
                state = store.transition(db, rollout, Event.START, HUB)
            spec = store.spec_of(rollout)
            self._pick_up_joiners(db, rollout, spec, state)
            wave = _wave(db, rollout)
            if wave.opened_at is None:
                if spec.approval_required and wave.approved_by is None:
                    rollout.waiting_for = (
                        f"approval of wave {wave.number + 1} by a second operator "
                        f"(not {rollout.created_by}): `edge-hub rollout approve {rollout_id}`"
                    )
                    return store.transition(db, rollout, Event.NEEDS_APPROVAL, HUB)
                wave.opened_at = at
                db.add(wave)
                audit.record(
                    db, HUB, "open_wave", store.object_name(rollout_id),
                    details={"wave": wave.number, "size": wave.size}, at=at,
                )  # fmt: skip
            due = self._due(db, rollout, wave, spec, at)
        if due and not self._notify(rollout, due, spec, at):
            return State.PAUSED
        with session(self.engine) as db:
            rollout = store.lock(db, rollout_id)
            state = State(rollout.state)
            wave = _wave(db, rollout)
            if state is State.RUNNING:
                left = _unnotified(db, rollout)
                if left:
                    rollout.waiting_for = (
                        f"notifying wave {wave.number + 1}: {left} devices left "
                        f"(at most {spec.pacing.per_minute} a minute, x"
                        f"{spec.pacing.increment_factor} each minute)"
                    )
                    return state
                wave.notified_at = at
                db.add(wave)
                state = store.transition(db, rollout, Event.WAVE_NOTIFIED, HUB)
            if state is not State.WAITING_GATE:
                return state
            verdict, values, details = self._evaluate(db, rollout, wave, spec, at)
            if verdict is Verdict.WAIT:
                return state
            if verdict is not Verdict.FAIL or spec.on_failure != "rollback":
                return self._decide(db, rollout, wave, verdict, values, details, at)
        # A failed gate with on_failure = rollback: sign the previous states first.
        done = revert(self.engine, self.key, self.releases, rollout, wave.number, at)
        with session(self.engine) as db:
            rollout = store.lock(db, rollout_id)
            if State(rollout.state) is not State.WAITING_GATE:
                return State(rollout.state)
            _record_gates(db, rollout_id, wave.number, Verdict.FAIL, values, at)
            rollout.waiting_for = None
            return store.transition(
                db, rollout, Event.AUTO_ROLLBACK, HUB,
                reason=_failed_reason(values), details={**details, **done},
            )  # fmt: skip

    # --- notification ------------------------------------------------------------------

    def _due(
        self, db: Session, rollout: Rollout, wave: RolloutWave, spec: RolloutSpec, at: datetime
    ) -> list[str]:
        """Devices of the opened waves still to notify, as many as pacing allows now."""
        assert wave.opened_at is not None
        budget = notify_budget(spec.pacing, (at - wave.opened_at).total_seconds())
        notified = db.exec(
            select(func.count())
            .select_from(RolloutDevice)
            .where(
                col(RolloutDevice.rollout_id) == rollout.id,
                col(RolloutDevice.wave) == wave.number,
                col(RolloutDevice.notified_at).is_not(None),
            )
        ).one()
        room = budget - int(notified)
        if room <= 0:
            return []
        query = _unnotified_query(rollout, RolloutDevice.device_id)
        return list(db.exec(query.order_by(col(RolloutDevice.position)).limit(room)).all())

    def _notify(
        self, rollout: Rollout, device_ids: list[str], spec: RolloutSpec, at: datetime
    ) -> bool:
        """Sign the release for these devices (with the rollout's maintenance window); a
        release no longer listed, or a window that no longer opens, pauses."""
        assert rollout.id is not None
        problem = self.releases(rollout.model, rollout.version)
        for start in range(0, len(device_ids), NOTIFY_CHUNK):
            chunk = device_ids[start : start + NOTIFY_CHUNK]
            if problem is None:
                try:
                    desired.assign_many(
                        self.engine, self.key(), chunk, rollout.model, rollout.version,
                        listed=lambda _m, _v: True,  # checked just now, with a better message
                        window=spec.window, now=at,
                    )  # fmt: skip
                except (desired.NotListed, WindowError) as exc:
                    problem = str(exc)
            with session(self.engine) as db:
                current = store.lock(db, rollout.id)
                if problem is not None:
                    current.waiting_for = problem
                    if State(current.state) not in FINAL | {State.PAUSED}:
                        store.transition(db, current, Event.PAUSE, HUB, reason=problem)
                    return False
                store.mark_notified(db, rollout.id, chunk, at)
            self.on_signed()
        return True

    def _pick_up_joiners(
        self, db: Session, rollout: Rollout, spec: RolloutSpec, state: State
    ) -> None:
        """Devices that joined the target since, drawn after the rest: into the current
        wave while it is being notified, else into the next one (the last wave once it is
        the current one). A device in another active rollout of the model stays there."""
        assert rollout.id is not None
        # Only target devices that are not members yet, found in SQL: loading every device
        # and member each step cost 0.5 s at 10,000 devices.
        joiners = store.target_devices(db, spec.target, not_in_rollout=rollout.id)
        if not joiners:
            return
        busy = store.held_by_other_rollouts(db, rollout.model, joiners, rollout.id)
        joiners = [d for d in joiners if d not in busy]
        if not joiners:
            return
        joined = _wave(db, rollout)
        if state is not State.RUNNING:  # the current wave's gates are being judged
            joined = db.get(RolloutWave, (rollout.id, rollout.wave + 1)) or joined
        position = store.member_count(db, rollout.id)
        previous = store.previous_versions(db, joiners, rollout.model)
        for offset, device_id in enumerate(joiners):
            db.add(
                RolloutDevice(
                    rollout_id=rollout.id, device_id=device_id, wave=joined.number,
                    position=position + offset, previous_version=previous[device_id],
                )
            )  # fmt: skip
        joined.size += len(joiners)
        db.add(joined)
        audit.record(
            db, HUB, "devices_joined", store.object_name(rollout.id),
            details={"wave": joined.number, "devices": joiners[:100], "count": len(joiners)},
        )  # fmt: skip

    # --- gates -------------------------------------------------------------------------

    def _evaluate(
        self, db: Session, rollout: Rollout, wave: RolloutWave, spec: RolloutSpec, at: datetime
    ) -> tuple[Verdict, list[GateValue], dict[str, object]]:
        assert wave.opened_at is not None and wave.notified_at is not None
        results = wave_results(
            db, rollout, wave.number, timedelta(seconds=spec.device_timeout_seconds), at
        )
        values = install_gates(results.counts(), spec.install)
        if spec.health.enabled:
            new = aggregate(self.health(rollout.model, rollout.version, wave.opened_at))
            old = None
            if rollout.baseline_version is not None:
                old = aggregate(
                    self.health(rollout.model, rollout.baseline_version, wave.opened_at)
                )
            values += health_gates(new, old, spec.health)
        soak_ends = wave.notified_at + timedelta(seconds=spec.soak_seconds)
        verdict = decide(values, soaked=at >= soak_ends)
        if wave.override_by is not None and verdict is not Verdict.WAIT:
            verdict = Verdict.PASS  # an operator resumed past this wave's gates
        wave.gates = [value.to_json() for value in values]
        db.add(wave)
        if verdict is Verdict.WAIT:
            rollout.waiting_for = _waiting(values, results.counts().pending, soak_ends, at)
            db.add(rollout)
        details: dict[str, object] = {
            "verdict": str(verdict),
            "gates": wave.gates,
            "timed_out": results.timed_out[:100],
            "failed": results.failed[:100],
        }
        return verdict, values, details

    def _decide(
        self,
        db: Session,
        rollout: Rollout,
        wave: RolloutWave,
        verdict: Verdict,
        values: list[GateValue],
        details: dict[str, object],
        at: datetime,
    ) -> State:
        assert rollout.id is not None
        _record_gates(db, rollout.id, wave.number, verdict, values, at)
        if verdict is Verdict.PASS:
            wave.passed_at = at
            db.add(wave)
            rollout.waiting_for = None
            last = db.get(RolloutWave, (rollout.id, wave.number + 1)) is None
            if last:
                return store.transition(db, rollout, Event.LAST_GATE_PASSED, HUB, details=details)
            rollout.wave = wave.number + 1
            return store.transition(db, rollout, Event.GATE_PASSED, HUB, details=details)
        if verdict is Verdict.INCONCLUSIVE:
            reason = "inconclusive: " + "; ".join(
                f"{v.gate} ({v.detail})" for v in values if v.verdict is Verdict.INCONCLUSIVE
            )
            event = Event.GATE_INCONCLUSIVE
        else:
            reason, event = _failed_reason(values), Event.GATE_FAILED
        rollout.waiting_for = f"paused: {reason}; resume, abort or roll back"
        return store.transition(db, rollout, event, HUB, reason=reason, details=details)


def _record_gates(
    db: Session, rollout_id: int, wave: int, verdict: Verdict, values: list[GateValue], at: datetime
) -> None:
    values_json = [value.to_json() for value in values]
    db.add(GateResult(rollout_id=rollout_id, wave=wave, at=at, verdict=verdict, values=values_json))


def _wave(db: Session, rollout: Rollout) -> RolloutWave:
    wave = db.get(RolloutWave, (rollout.id, rollout.wave))
    assert wave is not None, f"rollout {rollout.id} lacks its wave {rollout.wave}"
    return wave


def _unnotified_query(rollout: Rollout, *columns: Any):  # type: ignore[no-untyped-def]
    return (
        select(*(columns or (RolloutDevice,)))
        .select_from(RolloutDevice)
        .join(Device, col(Device.id) == col(RolloutDevice.device_id))
        .where(
            col(RolloutDevice.rollout_id) == rollout.id,
            col(RolloutDevice.wave) <= rollout.wave,
            col(RolloutDevice.notified_at).is_(None),
            col(Device.revoked_at).is_(None),
        )
    )


def _unnotified(db: Session, rollout: Rollout) -> int:
    return int(db.exec(_unnotified_query(rollout, func.count())).one())


def _failed_reason(values: list[GateValue]) -> str:
    failed = [v for v in values if v.verdict is Verdict.FAIL]
    return "gate failed: " + "; ".join(
        f"{v.gate} {_shown(v.value)} against {_shown(v.threshold)} ({v.detail})" for v in failed
    )


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _waiting(values: list[GateValue], pending: int, soak_ends: datetime, at: datetime) -> str:
    if pending:
        return f"{pending} devices have no install result yet (within their timeout)"
    if at < soak_ends:
        return f"soaking until {soak_ends.isoformat(timespec='seconds')}"
    waiting = [v.gate for v in values if v.verdict is Verdict.WAIT]
    return "waiting for " + ", ".join(waiting)
