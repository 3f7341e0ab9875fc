"""Install results of a wave's devices, from what ingest stored: reported state and install
events. A device that reports after its timeout counts from then on (late reports count)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Exists, case, exists, func, or_
from sqlmodel import Session, col, select

from edge_agent.protocol.messages import UpdateEvent
from hub.fleet.models import Device, InstallEventRecord, ReportedModelState
from hub.rollouts.gates import InstallCounts
from hub.rollouts.models import Rollout, RolloutDevice

_FAILED = (str(UpdateEvent.FAILED), str(UpdateEvent.ROLLED_BACK))
_HEALTHY = (str(UpdateEvent.HEALTHY),)


SAMPLE = 100  # device ids named per outcome (in audit details and status); the counts are exact


@dataclass
class WaveResults:
    tally: InstallCounts
    failed: list[str] = field(default_factory=list)  # the first SAMPLE, in draw order
    timed_out: list[str] = field(default_factory=list)  # the first SAMPLE, in draw order

    def counts(self) -> InstallCounts:
        return self.tally


def wave_results(
    db: Session, rollout: Rollout, wave: int, timeout: timedelta, at: datetime
) -> WaveResults:
    """Counted in SQL (GROUP BY over one CASE per member, EXISTS on indexed columns):
    loading every member, report and event of a 10,000-device wave each driver step cost
    0.3-0.7 s."""
    member = RolloutDevice
    reported = exists().where(
        col(ReportedModelState.device_id) == col(member.device_id),
        col(ReportedModelState.model) == rollout.model,
        col(ReportedModelState.active) == rollout.version,
    )

    def event_in(events: tuple[str, ...]) -> Exists:
        return exists().where(
            col(InstallEventRecord.device_id) == col(member.device_id),
            col(InstallEventRecord.model) == rollout.model,
            col(InstallEventRecord.version) == rollout.version,
            col(InstallEventRecord.event).in_(events),
        )

    outcome = case(
        (or_(reported, event_in(_HEALTHY)), "succeeded"),
        (event_in(_FAILED), "failed"),
        (col(member.notified_at) <= at - timeout, "timed_out"),
        else_="pending",
    ).label("outcome")
    members = (
        select(member.device_id, member.position, outcome)
        .join(Device, col(Device.id) == col(member.device_id))
        .where(
            col(member.rollout_id) == rollout.id,
            col(member.wave) == wave,
            col(Device.revoked_at).is_(None),
        )
        .subquery()
    )
    counted = dict(
        db.exec(select(members.c.outcome, func.count()).group_by(members.c.outcome)).all()
    )

    def sample(name: str) -> list[str]:
        if not counted.get(name):
            return []
        query = (
            select(members.c.device_id)
            .where(members.c.outcome == name)
            .order_by(members.c.position)
            .limit(SAMPLE)
        )
        return list(db.exec(query).all())

    tally = InstallCounts(
        sum(counted.values()),
        counted.get("succeeded", 0),
        counted.get("failed", 0),
        counted.get("timed_out", 0),
        counted.get("pending", 0),
    )
    return WaveResults(tally, failed=sample("failed"), timed_out=sample("timed_out"))
