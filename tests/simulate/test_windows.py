"""Maintenance windows on the hub side: assign refuses one that never opens, groups store
theirs and their devices' desired states carry it (renewals too), and a device outside its
window downloads but does not activate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select

from edge_agent.protocol import MaintenanceWindow, SignedDesired, WindowError
from hub.fleet import desired
from hub.fleet.models import DesiredRecord, ReportedModelState
from hub.simulate.harness import SimulationHub

MODEL = "chat"
NEVER = MaintenanceWindow(cron="0 0 30 2 *", duration_minutes=60)


def _records(hub: SimulationHub) -> list[DesiredRecord]:
    with Session(hub.engine) as db:
        return list(db.exec(select(DesiredRecord)).all())


def _closed_now() -> MaintenanceWindow:
    """A window that opens once a year, not now: the next opening is months away."""
    later = datetime.now(UTC) + timedelta(days=100)
    return MaintenanceWindow(cron=f"0 3 {later.day} {later.month} *", duration_minutes=60)


def test_assign_refuses_a_window_that_never_opens_and_stores_nothing(
    hub: SimulationHub,
) -> None:
    (device,) = hub.enroll(1)
    with pytest.raises(WindowError, match=r"window cron '0 0 30 2 \*' \(UTC\) never opens"):
        hub.assign([device.device_id], MODEL, "1.1.0", window=NEVER)
    assert _records(hub) == []


def test_a_group_window_that_never_opens_is_refused(hub: SimulationHub) -> None:
    hub.enroll(1, group="night-shift")
    with pytest.raises(WindowError, match="never opens"):
        desired.set_group_window(hub.engine, "night-shift", NEVER)


def test_the_group_window_goes_into_each_signed_state_and_survives_renewal(
    hub: SimulationHub,
) -> None:
    (device,) = hub.enroll(1, group="night-shift")
    window = _closed_now()
    desired.set_group_window(hub.engine, "night-shift", window)
    hub.assign([device.device_id], MODEL, "1.1.0")
    (record,) = _records(hub)
    assert SignedDesired.model_validate_json(record.signed).signed["window"] == window.model_dump()
    desired.renew_expiring(hub.engine, hub.director_key, now=datetime.now(UTC) + timedelta(days=29))
    (renewed,) = _records(hub)
    assert renewed.sequence == record.sequence + 1
    assert SignedDesired.model_validate_json(renewed.signed).signed["window"] == window.model_dump()


def test_a_device_outside_its_window_downloads_but_does_not_activate(
    hub: SimulationHub,
) -> None:
    enrolled = hub.enroll(4)
    ids = [e.device_id for e in enrolled]
    with hub.fleet() as fleet:
        fleet.add(enrolled, active={MODEL: "1.0.0"})
        fleet.connect()
        hub.assign(ids[:2], MODEL, "1.1.0", window=_closed_now())
        hub.assign(ids[2:], MODEL, "1.1.0")
        hub.publish_pending()
        fleet.wait_sequence(dict.fromkeys(ids, 1))

        def reported() -> dict[str, ReportedModelState]:
            with Session(hub.engine) as db:
                return {r.device_id: r for r in db.exec(select(ReportedModelState)).all()}

        fleet.wait_until(lambda: len(reported()) == 4, 20, "every device reported")
        rows = reported()
        for device_id in ids[:2]:
            assert fleet.devices[device_id].runtime.active == {MODEL: "1.0.0"}
            assert fleet.devices[device_id].waiting_for_window == {MODEL: "1.1.0"}
            assert (rows[device_id].active, rows[device_id].pending) == ("1.0.0", "1.1.0")
        for device_id in ids[2:]:
            assert rows[device_id].active == "1.1.0"
