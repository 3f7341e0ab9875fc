"""Attacks on the release a completed rollout signs to devices that join its target later:
a latecomer must never be moved below what it is assigned, never get a release revoked
since, never an older release because two completed rollouts' targets overlap, and never
outside its group's maintenance window."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from edge_agent.protocol import MaintenanceWindow, SignedDesired
from edge_agent.protocol.messages import Envelope, InstallEvent, UpdateEvent
from hub.db import session
from hub.fleet import desired, registry
from hub.fleet.models import DesiredRecord
from hub.ingest.store import store as ingest
from hub.rollouts import store
from hub.rollouts.driver import Driver
from hub.rollouts.health import telemetry_query
from hub.rollouts.machine import State
from tests.hub_rollouts.conftest import Clock
from tests.hub_rollouts.test_driver import desired_version, make_spec, members, on_old_release

LISTED = {"1.0.0", "2.0.0", "3.0.0"}


def listed(model: str, version: str) -> str | None:
    return None if version in LISTED else f"{model} {version} is revoked"


def complete(
    engine: Engine, key: Ed25519PrivateKey, clock: Clock, **overrides: Any
) -> tuple[int, Driver]:
    """A one-wave rollout of `overrides`, every member healthy, run to completion."""
    spec = make_spec(wave_percent=[100], **overrides)
    rollout = store.create(engine, spec, "alice", listed)
    assert rollout.id is not None
    driver = Driver(engine, lambda: key, listed, telemetry_query(engine, 5), clock)
    driver.step(rollout.id)
    envelopes = [
        Envelope.of(
            InstallEvent(
                model="chat", version=spec.version, event=UpdateEvent.HEALTHY,
                from_version="1.0.0",
            ),
            device_id=m.device_id, sent_at=clock(),
        )
        for m in members(engine, rollout.id)
    ]  # fmt: skip
    with engine.begin() as connection:
        ingest(connection, envelopes, clock())
    clock.advance(seconds=61)
    driver.step(rollout.id)
    assert store.get(engine, rollout.id).state == State.COMPLETED
    return rollout.id, driver


def sequence(engine: Engine, device_id: str) -> int:
    with session(engine) as db:
        record = db.get(DesiredRecord, device_id)
        assert record is not None
        return record.sequence


def test_a_latecomer_already_assigned_a_newer_release_is_not_downgraded(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    rollout, driver = complete(engine, key, clock)
    registry.enroll(engine, "box-late", at=clock())
    desired.assign(engine, key, ["box-late"], "chat", "3.0.0", listed=lambda _m, _v: True)
    registry.add_to_group(engine, "shop", "box-late")
    driver.step_all()
    assert desired_version(engine, "box-late") == "3.0.0"
    assert sequence(engine, "box-late") == 1
    assert "box-late" not in {m.device_id for m in members(engine, rollout)}


def test_a_latecomer_gets_nothing_once_the_release_is_revoked(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    _, driver = complete(engine, key, clock)
    registry.enroll(engine, "box-late", group="shop", at=clock())
    LISTED.discard("2.0.0")
    try:
        driver.step_all()
    finally:
        LISTED.add("2.0.0")
    assert desired_version(engine, "box-late") is None


def test_overlapping_targets_never_leave_a_latecomer_on_the_older_release(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    """The canary ring completed 2.0.0, then the whole shop 3.0.0; a new canary device of
    the shop is in both targets and must end on 3.0.0, signed once."""
    on_old_release(engine, key, fleet)
    clock = Clock()
    complete(engine, key, clock, target={"tags": {"ring": "canary"}})
    _, driver = complete(engine, key, clock, version="3.0.0")
    registry.enroll(engine, "box-late", group="shop", tags={"ring": "canary"}, at=clock())
    driver.step_all()
    assert desired_version(engine, "box-late") == "3.0.0"
    assert sequence(engine, "box-late") == 1
    driver.step_all()  # and the next step does not move it either
    assert desired_version(engine, "box-late") == "3.0.0"


def test_a_latecomer_activates_only_in_its_groups_maintenance_window(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    """A rollout without a window of its own, to a tag: a tagged device that joins later
    from a group with a window gets the release signed with that window."""
    on_old_release(engine, key, fleet)
    clock = Clock()
    _, driver = complete(engine, key, clock, target={"tags": {"ring": "canary"}})
    night = MaintenanceWindow(cron="0 2 * * *", duration_minutes=60, timezone="Europe/Paris")
    registry.create_group(engine, "night")
    desired.set_group_window(engine, "night", night)
    registry.enroll(engine, "box-late", group="night", tags={"ring": "canary"}, at=clock())
    driver.step_all()
    with session(engine) as db:
        record = db.get(DesiredRecord, "box-late")
        assert record is not None and record.models == {"chat": "2.0.0"}
        assert desired.stored_window(record.window) == night
        signed = SignedDesired.model_validate_json(record.signed).signed
    assert MaintenanceWindow.model_validate(signed["window"]) == night  # what the device obeys


def test_a_latecomer_held_by_a_newer_rollout_waits_for_it(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    """A newcomer already drawn into a newer rollout of the model, which has not signed it
    yet (waiting for approval), is that rollout's: the completed one signs it nothing."""
    on_old_release(engine, key, fleet)
    clock = Clock()
    _, driver = complete(engine, key, clock)
    registry.enroll(engine, "box-late", group="shop", at=clock())
    newer = make_spec(
        version="3.0.0",
        target={"devices": ["box-late"]},
        wave_percent=[100],
        approval_required=True,
    )
    waiting = store.create(engine, newer, "alice", listed)
    assert waiting.id is not None
    driver.step_all()
    assert store.get(engine, waiting.id).state == State.WAITING_APPROVAL
    assert desired_version(engine, "box-late") is None
