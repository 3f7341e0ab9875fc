"""A crash of the managed broker loses no device's desired state.

The managed Mosquitto saves its persistence every few seconds, not after every change
(hub.broker.mosquitto): a kill -9 loses the retained states it acknowledged since the last
save. The hub's publisher re-publishes every current state when it reconnects, so each
device still gets its newest state, proven by delivery to simulated devices that connect
with their own certificates and verify what they get.
"""

from __future__ import annotations

import time

from sqlmodel import Session, select

from hub.fleet.models import DesiredRecord
from hub.simulate.harness import SimulationHub

MODEL = "chat"


def _current_states(hub: SimulationHub) -> dict[str, DesiredRecord]:
    with Session(hub.engine) as db:
        return {r.device_id: r for r in db.exec(select(DesiredRecord)).all()}


def test_every_device_gets_its_current_state_after_the_broker_is_killed(
    hub: SimulationHub,
) -> None:
    enrolled = hub.enroll(20, group="lab")
    ids = [e.device_id for e in enrolled]
    hub.assign(ids, MODEL, "1.0.0")
    hub.assign(ids[:10], MODEL, "1.1.0")  # half of them on sequence 2
    assert hub.publish_pending() == 20  # every state acknowledged by the broker

    hub.broker.kill()
    # The worst case of a crash: nothing saved since the states were acknowledged.
    (hub.broker.persistence_dir / "mosquitto.db").unlink(missing_ok=True)
    hub.broker.start()
    # The hub's periodic rounds, while the publisher notices the crash and reconnects.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not hub.publish_pending():
        time.sleep(0.2)

    states = _current_states(hub)
    with hub.fleet() as fleet:
        fleet.add(enrolled, active={MODEL: "1.0.0"})
        fleet.connect()
        fleet.wait_sequence({d: states[d].sequence for d in ids}, timeout_s=15)
        for device_id in ids:
            state = fleet.devices[device_id].desired
            assert state is not None
            assert state.sequence == states[device_id].sequence
            assert state.models[MODEL].version == states[device_id].models[MODEL]
        assert not [r for d in fleet.devices.values() for r in d.refusals]
