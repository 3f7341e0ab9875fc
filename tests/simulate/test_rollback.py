"""The director's signed rollback through the real broker: simulated devices that already
activated a release (their floor rose to it) go back to their kept version only when the
desired state carries a signed rollback of that release; a plain older assignment, a
replayed old rollback and a forged one are refused, and the device stays where it was."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from edge_agent.protocol import SignedDesired
from edge_agent.protocol.desired import canonical_json, key_id
from hub.fleet import desired
from hub.fleet.models import DesiredRecord, ReportedModelState
from hub.simulate import SimulatedFleet
from hub.simulate.harness import SimulationHub

MODEL = "chat"


@pytest.fixture
def on_new(hub: SimulationHub) -> Iterator[tuple[SimulatedFleet, str]]:
    """One device that ran 1.0.0, then activated 2.0.0 (its floor is 2.0.0)."""
    (device,) = hub.enroll(1)
    with hub.fleet() as fleet:
        fleet.add([device], active={MODEL: "1.0.0"})
        fleet.connect()
        _assign(hub, fleet, device.device_id, "2.0.0")
        assert fleet.devices[device.device_id].runtime.floor[MODEL] == "2.0.0"
        yield fleet, device.device_id


def _assign(
    hub: SimulationHub, fleet: SimulatedFleet, device_id: str, version: str, **options: Any
) -> DesiredRecord:
    (record,) = desired.assign(
        hub.engine, hub.director_key, [device_id], MODEL, version,
        listed=lambda _m, _v: True, **options,
    )  # fmt: skip
    hub.publish_pending()
    fleet.wait_sequence({device_id: record.sequence})
    _wait_reported(hub, fleet, device_id, record.sequence)
    return record


def _wait_reported(hub: SimulationHub, fleet: SimulatedFleet, device_id: str, seq: int) -> None:
    """Until the hub stored the device's report of desired state `seq`."""

    def reported() -> bool:
        device = fleet.devices[device_id]
        return any(
            getattr(e.payload, "desired_sequence", None) == seq for e in list(device.sent)
        ) and _reported_active(hub, device_id) == device.runtime.active.get(MODEL)

    fleet.wait_until(reported, 30, f"report of desired state {seq}")


def _reported_active(hub: SimulationHub, device_id: str) -> str | None:
    with Session(hub.engine) as db:
        row = db.exec(select(ReportedModelState).where(ReportedModelState.device_id == device_id))
        found = row.first()
        return found.active if found else None


def _publish_raw(hub: SimulationHub, device_id: str, signed: SignedDesired) -> None:
    """Put `signed` on the device's desired topic as the hub's publisher would."""
    with Session(hub.engine) as db:
        record = db.get(DesiredRecord, device_id)
        assert record is not None
        record.signed = signed.model_dump_json()
        record.sequence = int(signed.signed["sequence"])
        record.published_at = None
        db.add(record)
        db.commit()
    hub.publish_pending()


def _refused(fleet: SimulatedFleet, device_id: str, text: str) -> None:
    device = fleet.devices[device_id]
    fleet.wait_until(lambda: any(text in r for r in device.refusals), 30, f"refused: {text}")


def test_a_signed_rollback_returns_an_activated_device_to_its_kept_version(
    hub: SimulationHub, on_new: tuple[SimulatedFleet, str]
) -> None:
    fleet, device_id = on_new
    plain = _assign(hub, fleet, device_id, "1.0.0")  # older, no rollback statement
    assert fleet.active_versions(MODEL) == {device_id: "2.0.0"}
    assert _reported_active(hub, device_id) == "2.0.0"
    errors = [getattr(e.payload, "error", None) or "" for e in fleet.devices[device_id].sent]
    assert any("carries no signed rollback" in e for e in errors)
    rollback = _assign(hub, fleet, device_id, "1.0.0", rolled_back_from="2.0.0")
    assert rollback.sequence == plain.sequence + 1
    assert fleet.active_versions(MODEL) == {device_id: "1.0.0"}
    assert _reported_active(hub, device_id) == "1.0.0"
    assert fleet.devices[device_id].runtime.floor[MODEL] == "1.0.0"


def test_a_replayed_old_rollback_is_refused(
    hub: SimulationHub, on_new: tuple[SimulatedFleet, str]
) -> None:
    fleet, device_id = on_new
    old = _assign(hub, fleet, device_id, "1.0.0", rolled_back_from="2.0.0")
    assert fleet.active_versions(MODEL) == {device_id: "1.0.0"}
    _assign(hub, fleet, device_id, "2.0.0")  # fixed: forward again, floor 2.0.0
    assert fleet.active_versions(MODEL) == {device_id: "2.0.0"}
    _publish_raw(hub, device_id, SignedDesired.model_validate_json(old.signed))
    _refused(fleet, device_id, f"desired state {old.sequence} is not newer")
    assert fleet.active_versions(MODEL) == {device_id: "2.0.0"}


def _statement(device_id: str, sequence: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "schema_version": 1, "device_id": device_id, "sequence": sequence,
        "issued_at": now.isoformat(), "expires": (now + timedelta(days=1)).isoformat(),
        "models": {MODEL: {"version": "1.0.0", "manifest": "chat/1.0.0/manifest.json"}},
        "rollbacks": {MODEL: "2.0.0"},
    }  # fmt: skip


def test_a_forged_rollback_is_refused(
    hub: SimulationHub, on_new: tuple[SimulatedFleet, str]
) -> None:
    fleet, device_id = on_new
    sequence = fleet.devices[device_id].last_sequence + 1
    signed = _statement(device_id, sequence)
    attacker = Ed25519PrivateKey.generate()
    # Signed by a key the device does not trust.
    own_key = SignedDesired(
        signed=signed,
        key_id=key_id(attacker.public_key()),
        signature=base64.b64encode(attacker.sign(canonical_json(signed))).decode(),
    )
    _publish_raw(hub, device_id, own_key)
    _refused(fleet, device_id, "which is not trusted")
    # Claiming the director's key.
    claimed = own_key.model_copy(update={"key_id": key_id(hub.director_key.public_key())})
    _publish_raw(hub, device_id, claimed)
    _refused(fleet, device_id, "does not verify")
    assert fleet.active_versions(MODEL) == {device_id: "2.0.0"}
    assert fleet.devices[device_id].last_sequence == sequence - 1


def test_a_rollback_survives_renewal_for_a_device_that_was_away(hub: SimulationHub) -> None:
    (device,) = hub.enroll(1)
    desired.assign(
        hub.engine, hub.director_key, [device.device_id], MODEL, "1.0.0",
        listed=lambda _m, _v: True, rolled_back_from="2.0.0",
    )  # fmt: skip
    desired.assign(
        hub.engine, hub.director_key, [device.device_id], "embed", "1.0.0",
        listed=lambda _m, _v: True,
    )  # fmt: skip
    desired.renew_expiring(hub.engine, hub.director_key, now=datetime.now(UTC) + timedelta(days=29))
    with Session(hub.engine) as db:
        record = db.get(DesiredRecord, device.device_id)
    assert record is not None and record.sequence == 3
    assert SignedDesired.model_validate_json(record.signed).signed["rollbacks"] == {MODEL: "2.0.0"}
