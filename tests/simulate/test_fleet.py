"""The simulator against the real hub parts: enrollment certificates, the managed broker's
TLS and ACLs, signed desired state verified on each device, reports ingested by the hub."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from sqlmodel import Session, select

from edge_agent.protocol import (
    DeviceTopic,
    Envelope,
    InstallEvent,
    SignedDesired,
    UpdateEvent,
    device_topic,
    encode,
)
from hub.fleet import desired
from hub.fleet.models import DesiredRecord, InstallEventRecord, ReportedModelState
from hub.simulate import Behaviour, DeviceProfile
from hub.simulate.harness import SimulationHub
from hub.telemetry.models import TELEMETRY
from tests.hub_broker.conftest import tls_client

MODEL = "chat"


def _rows(hub: SimulationHub, table: type[Any]) -> list[Any]:
    with Session(hub.engine) as db:
        return list(db.exec(select(table)).all())


def _wait(condition: Callable[[], object], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_devices_verify_install_and_the_hub_ingests_their_reports(hub: SimulationHub) -> None:
    enrolled = hub.enroll(60, group="lab")
    ids = [e.device_id for e in enrolled]
    failing = set(ids[:6])
    with hub.fleet() as fleet:
        fleet.add(
            enrolled[:6],
            profile=DeviceProfile(Behaviour(install_failure_rate=1.0)),
            active={MODEL: "1.0.0"},
        )
        fleet.add(
            enrolled[6:],
            profile=DeviceProfile(Behaviour(install_latency_s=0.2)),
            active={MODEL: "1.0.0"},
        )
        fleet.connect()
        hub.assign(ids, MODEL, "1.1.0")
        assert hub.publish_pending() == 60
        fleet.wait_sequence(dict.fromkeys(ids, 1), timeout_s=30)
        fleet.wait_until(
            lambda: all(len(d.sent) >= 3 for d in fleet.devices.values()), 30, "reports sent"
        )
        active = fleet.active_versions(MODEL)
        assert {d for d, v in active.items() if v == "1.0.0"} == failing
        assert all(v == "1.1.0" for d, v in active.items() if d not in failing)
        assert all(not d.refusals for d in fleet.devices.values())

        # Delivery proven at the hub: its ingest stored what the devices published.
        def ingested() -> bool:
            events = _rows(hub, InstallEventRecord)
            return len({(e.device_id, e.event) for e in events}) == 120

        assert _wait(ingested), "the hub did not store every install event"
        results = {(e.device_id, e.event) for e in _rows(hub, InstallEventRecord)}
        assert {d for d, ev in results if ev == UpdateEvent.FAILED} == failing
        states = {r.device_id: r for r in _rows(hub, ReportedModelState)}
        assert _wait(lambda: len(_rows(hub, ReportedModelState)) == 60)
        states = {r.device_id: r for r in _rows(hub, ReportedModelState)}
        assert all(states[d].active == "1.0.0" for d in failing)
        assert all(states[d].last_result == "failed" for d in failing)


def test_a_forged_desired_state_is_refused_by_the_device(hub: SimulationHub) -> None:
    enrolled = hub.enroll(2)
    target = enrolled[0].device_id
    hub.assign([target], MODEL, "1.1.0")
    record = _rows(hub, DesiredRecord)[0]
    forged = SignedDesired.model_validate_json(record.signed)
    signed = dict(forged.signed)
    manifest = f"releases/{MODEL}/6.6.6/manifest.json"
    signed["models"] = {MODEL: {"version": "6.6.6", "manifest": manifest}}
    forged = forged.model_copy(update={"signed": signed})
    with hub.fleet() as fleet:
        fleet.add(enrolled, active={MODEL: "1.0.0"})
        fleet.connect()
        # The attack for real: the hub's own broker identity publishes the altered state.
        with tls_client(hub.broker, "_hub", hub.ca.hub_client_files()) as attacker:
            attacker.publish(
                device_topic(target, DeviceTopic.DESIRED),
                encode(Envelope.of(forged, device_id=target)),
            )
        device = fleet.devices[target]
        fleet.wait_until(lambda: bool(device.refusals), 10, "the forged state refused")
        assert "signature does not verify" in device.refusals[0]
        assert device.last_sequence == 0
        assert device.runtime.active == {MODEL: "1.0.0"}
        assert not any(isinstance(e.payload, InstallEvent) for e in device.sent)


def test_an_offline_device_catches_up_and_a_late_report_arrives(hub: SimulationHub) -> None:
    enrolled = hub.enroll(3)
    ids = [e.device_id for e in enrolled]
    away, late = ids[0], ids[1]
    with hub.fleet() as fleet:
        fleet.add(enrolled, active={MODEL: "1.0.0"})
        fleet.connect()
        fleet.disconnect([away])
        fleet.hold_reports([late])
        hub.assign(ids, MODEL, "1.1.0")
        hub.publish_pending()
        fleet.wait_sequence({ids[1]: 1, ids[2]: 1})
        assert fleet.devices[away].last_sequence == 0
        fleet.connect([away])  # the retained state waits on the broker
        fleet.wait_sequence({away: 1})

        def reported() -> set[str]:
            return {r.device_id for r in _rows(hub, ReportedModelState)}

        assert _wait(lambda: reported() == {away, ids[2]})
        fleet.hold_reports([late], hold=False)
        assert _wait(lambda: len(_rows(hub, ReportedModelState)) == 3)


def test_telemetry_carries_tokens_the_hub_accepts(hub: SimulationHub) -> None:
    enrolled = hub.enroll(5)
    with hub.fleet() as fleet:
        fleet.add(enrolled, active={MODEL: "1.0.0"})
        fleet.connect()
        sent = fleet.send_telemetry(requests=10)
        assert sent == 10  # a model report and an agent report per device
        assert hub.ingest is not None

        def stored() -> int:
            with hub.engine.connect() as connection:
                return len(connection.execute(TELEMETRY.select()).all())

        assert _wait(lambda: stored() == 10), f"stored {stored()} of 10 reports"
        assert not hub.ingest.stats.refused


def test_states_the_broker_did_not_acknowledge_stay_pending(hub: SimulationHub) -> None:
    enrolled = hub.enroll(3)
    ids = [e.device_id for e in enrolled]
    broker = hub.broker._process._process
    assert broker is not None
    hub.assign(ids, MODEL, "1.1.0")
    # Frozen, the broker keeps the connection open and acknowledges nothing.
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        assert hub.publisher.wait_connected(0)
        assert hub.publish_pending() == 0
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    assert len(desired.pending(hub.engine)) == 3
    assert hub.publisher.wait_connected(30)
    assert hub.publish_pending() == 3
    assert desired.pending(hub.engine) == []
    with hub.fleet() as fleet:  # what the hub recorded as published is on the broker
        fleet.add(enrolled, active={MODEL: "1.0.0"})
        fleet.connect()
        fleet.wait_sequence(dict.fromkeys(ids, 1))
