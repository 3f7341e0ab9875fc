"""Install results of a wave's devices, from what ingest stored: reported state and install
events. A device that reports after its timeout counts from then on (late reports count)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from edge_agent.protocol.messages import UpdateEvent
from hub.fleet.models import Device, InstallEventRecord, ReportedModelState
from hub.rollouts.gates import InstallCounts
from hub.rollouts.models import Rollout, RolloutDevice

_FAILED = (str(UpdateEvent.FAILED), str(UpdateEvent.ROLLED_BACK))


@dataclass
class WaveResults:
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def counts(self) -> InstallCounts:
        size = len(self.succeeded) + len(self.failed) + len(self.timed_out) + len(self.pending)
        return InstallCounts(
            size, len(self.succeeded), len(self.failed), len(self.timed_out), len(self.pending)
        )


def wave_results(
    db: Session, rollout: Rollout, wave: int, timeout: timedelta, at: datetime
) -> WaveResults:
    members = db.exec(
        select(RolloutDevice)
        .join(Device, col(Device.id) == col(RolloutDevice.device_id))
        .where(
            col(RolloutDevice.rollout_id) == rollout.id,
            col(RolloutDevice.wave) == wave,
            col(Device.revoked_at).is_(None),
        )
        .order_by(col(RolloutDevice.position))
    ).all()
    ids = [m.device_id for m in members]
    active = {
        state.device_id
        for state in db.exec(
            select(ReportedModelState).where(
                col(ReportedModelState.device_id).in_(ids),
                col(ReportedModelState.model) == rollout.model,
                col(ReportedModelState.active) == rollout.version,
            )
        ).all()
    }
    events = db.exec(
        select(InstallEventRecord.device_id, InstallEventRecord.event).where(
            col(InstallEventRecord.device_id).in_(ids),
            col(InstallEventRecord.model) == rollout.model,
            col(InstallEventRecord.version) == rollout.version,
        )
    ).all()
    healthy = {device for device, event in events if event == UpdateEvent.HEALTHY}
    failed = {device for device, event in events if event in _FAILED}
    results = WaveResults()
    for member in members:
        device = member.device_id
        if device in active or device in healthy:
            results.succeeded.append(device)
        elif device in failed:
            results.failed.append(device)
        elif member.notified_at is not None and at - member.notified_at >= timeout:
            results.timed_out.append(device)
        else:
            results.pending.append(device)
    return results
