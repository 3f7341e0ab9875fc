"""A rollout as the API and the CLI show it: each wave's progress and gate values against
their thresholds, the timed-out devices of the current wave, and why it is waiting."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import col, select

from hub.db import session
from hub.rollouts import store
from hub.rollouts.models import Rollout, RolloutDevice, RolloutWave
from hub.rollouts.results import wave_results


def summary(rollout: Rollout) -> dict[str, Any]:
    return {
        "id": rollout.id,
        "model": rollout.model,
        "version": rollout.version,
        "baseline_version": rollout.baseline_version,
        "state": rollout.state,
        "wave": rollout.wave,
        "created_by": rollout.created_by,
        "created_at": rollout.created_at.isoformat(),
        "updated_at": rollout.updated_at.isoformat(),
        "waiting_for": rollout.waiting_for,
    }


def describe(engine: Engine, rollout_id: int) -> dict[str, Any]:
    at = store.now()
    with session(engine) as db:
        rollout = db.get(Rollout, rollout_id)
        if rollout is None:
            raise store.NoRollout(f"no rollout {rollout_id}: `edge-hub rollout list` shows them")
        spec = store.spec_of(rollout)
        timeout = timedelta(seconds=spec.device_timeout_seconds)
        waves = db.exec(
            select(RolloutWave)
            .where(col(RolloutWave.rollout_id) == rollout_id)
            .order_by(col(RolloutWave.number))
        ).all()
        shown = []
        for wave in waves:
            results = wave_results(db, rollout, wave.number, timeout, at)
            notified = db.exec(
                select(func.count()).where(
                    col(RolloutDevice.rollout_id) == rollout_id,
                    col(RolloutDevice.wave) == wave.number,
                    col(RolloutDevice.notified_at).is_not(None),
                )
            ).one()  # counted by the database: a wave may hold thousands
            counts = results.counts()
            shown.append(
                {
                    "number": wave.number,
                    "size": wave.size,
                    "notified": notified,
                    "succeeded": counts.succeeded,
                    "failed": counts.failed,
                    "timed_out": counts.timed_out,
                    "pending": counts.pending,
                    "timed_out_devices": results.timed_out[:100],
                    "opened_at": wave.opened_at.isoformat() if wave.opened_at else None,
                    "passed_at": wave.passed_at.isoformat() if wave.passed_at else None,
                    "approved_by": wave.approved_by,
                    "gates": wave.gates,
                }
            )
        window = None
        if spec.window is not None:
            # When devices of an opened wave can next activate (each wave completes then).
            opens = spec.window.next_open(at)
            window = {
                **spec.window.model_dump(mode="json"),
                "next_open": opens.isoformat() if opens else None,
            }
        return {
            **summary(rollout),
            "spec": rollout.spec,
            "seed": rollout.seed,
            "window": window,
            "waves": shown,
        }
