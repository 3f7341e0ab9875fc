"""The driver against the real hub database (SQLite and PostgreSQL): results arrive the way
ingest stores them (hub.ingest.store), desired state is really signed (hub.fleet.desired)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlmodel import col, select

from edge_agent.protocol.messages import Envelope, InstallEvent, UpdateEvent
from hub.db import session
from hub.fleet import desired
from hub.fleet.models import DesiredRecord
from hub.ingest.store import store as ingest
from hub.rollouts import actions, audit, store
from hub.rollouts.driver import Driver
from hub.rollouts.health import telemetry_query
from hub.rollouts.machine import State
from hub.rollouts.models import RolloutDevice
from hub.rollouts.spec import RolloutSpec
from tests.hub_rollouts.conftest import Clock, releases
from tests.hub_telemetry.helpers import busy, store_all

WAVES = [2, 10, 50, 100]  # of 50 devices: 1, 4, 20, 25


def make_spec(**overrides: Any) -> RolloutSpec:
    data: dict[str, Any] = {
        "model": "chat",
        "version": "2.0.0",
        "target": {"group": "shop"},
        "wave_percent": WAVES,
        "soak_seconds": 60,
        "device_timeout_seconds": 600,
        "install": {"min_success_ratio": 0.9, "max_failure_ratio": 0.1},
        "seed": 7,
        **overrides,
    }
    return RolloutSpec.model_validate(data)


def driver(engine: Engine, key: Ed25519PrivateKey, clock: Clock) -> Driver:
    return Driver(engine, lambda: key, releases, telemetry_query(engine, 5), clock)


def members(engine: Engine, rollout_id: int, wave: int | None = None) -> list[RolloutDevice]:
    with session(engine) as db:
        query = select(RolloutDevice).where(col(RolloutDevice.rollout_id) == rollout_id)
        if wave is not None:
            query = query.where(col(RolloutDevice.wave) == wave)
        return list(db.exec(query.order_by(col(RolloutDevice.position))).all())


def report(engine: Engine, devices: list[str], event: UpdateEvent, at: datetime) -> None:
    envelopes = [
        Envelope.of(
            InstallEvent(model="chat", version="2.0.0", event=event, from_version="1.0.0"),
            device_id=d,
            sent_at=at,
        )
        for d in devices
    ]
    with engine.begin() as connection:
        ingest(connection, envelopes, at)


def desired_version(engine: Engine, device_id: str) -> str | None:
    with session(engine) as db:
        record = db.get(DesiredRecord, device_id)
        return None if record is None else record.models.get("chat")


def on_old_release(engine: Engine, key: Ed25519PrivateKey, fleet: list[str]) -> None:
    desired.assign(engine, key, fleet, "chat", "1.0.0", listed=lambda _m, _v: True)


def run_wave(engine: Engine, d: Driver, clock: Clock, rollout_id: int, wave: int) -> list[str]:
    """Notify the wave; every device of it reports success."""
    d.step(rollout_id)
    devices = [m.device_id for m in members(engine, rollout_id, wave)]
    assert all(desired_version(engine, x) == "2.0.0" for x in devices)
    report(engine, devices, UpdateEvent.HEALTHY, clock())
    return devices


def test_a_healthy_rollout_completes_wave_by_wave(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    rollout = store.create(engine, make_spec(), "alice", releases)
    assert rollout.id is not None and rollout.baseline_version == "1.0.0"
    d = driver(engine, key, clock)
    sizes = []
    for wave in range(4):
        devices = run_wave(engine, d, clock, rollout.id, wave)
        sizes.append(len(devices))
        # Not yet the next wave: the soak holds it.
        later = [m.device_id for m in members(engine, rollout.id) if m.wave > wave]
        assert all(desired_version(engine, x) == "1.0.0" for x in later)
        assert d.step(rollout.id) is State.WAITING_GATE
        assert "soaking" in (store.get(engine, rollout.id).waiting_for or "")
        clock.advance(seconds=61)
        d.step(rollout.id)
    assert sizes == [1, 4, 20, 25]
    assert store.get(engine, rollout.id).state == State.COMPLETED
    assert all(desired_version(engine, x) == "2.0.0" for x in fleet)
    actions_seen = [e.action for e in audit.entries(engine, store.object_name(rollout.id))]
    assert actions_seen[:3] == ["create", "start", "open_wave"]
    assert actions_seen.count("gate_passed") == 3 and actions_seen[-1] == "last_gate_passed"


def test_twenty_percent_install_failures_pause_at_the_first_wave(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    rollout = store.create(
        engine, make_spec(wave_counts=[10, 40], wave_percent=None), "a", releases
    )
    assert rollout.id is not None
    d = driver(engine, key, clock)
    d.step(rollout.id)
    wave = [m.device_id for m in members(engine, rollout.id, 0)]
    report(engine, wave[:2], UpdateEvent.FAILED, clock())
    assert d.step(rollout.id) is State.PAUSED  # at once, without waiting for the others
    current = store.get(engine, rollout.id)
    assert "failure_ratio 0.2 against 0.1" in (current.waiting_for or "")
    later = [m.device_id for m in members(engine, rollout.id, 1)]
    assert all(desired_version(engine, x) == "1.0.0" for x in later)  # nothing else opened
    clock.advance(hours=1)
    assert d.step(rollout.id) is State.PAUSED  # stays paused


def test_a_gate_failure_with_rollback_returns_the_wave_to_its_release(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    spec = make_spec(wave_counts=[10, 40], wave_percent=None, on_failure="rollback")
    rollout = store.create(engine, spec, "a", releases)
    assert rollout.id is not None
    d = driver(engine, key, clock)
    d.step(rollout.id)
    wave = [m.device_id for m in members(engine, rollout.id, 0)]
    report(engine, wave[:3], UpdateEvent.ROLLED_BACK, clock())
    assert d.step(rollout.id) is State.ROLLED_BACK
    assert all(desired_version(engine, x) == "1.0.0" for x in fleet)
    entry = audit.entries(engine, store.object_name(rollout.id))[-1]
    assert entry.action == "auto_rollback" and entry.details["reverted"] == {"1.0.0": 10}


def test_doubled_error_rate_trips_the_health_gate(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    spec = make_spec(
        wave_counts=[25, 25], wave_percent=None, on_failure="rollback",
        health={"max_error_rate_increase": 0.01},
    )  # fmt: skip
    rollout = store.create(engine, spec, "a", releases)
    assert rollout.id is not None
    d = driver(engine, key, clock)
    run_wave(engine, d, clock, rollout.id, 0)
    # Same hour: 10 devices on the old release at 2% errors, 10 on the new one at 4%.
    old = [busy(i, version="1.0.0", hour=0) for i in range(10)]
    new = [busy(100 + i, version="2.0.0", hour=0, errors={"timeout": 4}) for i in range(10)]
    store_all(engine, old + new)
    clock.advance(seconds=61)
    assert d.step(rollout.id) is State.ROLLED_BACK
    entry = audit.entries(engine, store.object_name(rollout.id))[-1]
    assert "error_rate_increase 0.02 against 0.01" in (entry.reason or "")


def test_too_few_devices_in_telemetry_is_inconclusive_and_pauses(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    spec = make_spec(
        wave_counts=[25, 25], wave_percent=None, health={"max_error_rate_increase": 0.01}
    )
    rollout = store.create(engine, spec, "a", releases)
    assert rollout.id is not None
    d = driver(engine, key, clock)
    run_wave(engine, d, clock, rollout.id, 0)
    store_all(engine, [busy(i, version="1.0.0") for i in range(10)])
    store_all(engine, [busy(100 + i, version="2.0.0") for i in range(3)])  # < k = 5
    clock.advance(seconds=61)
    assert d.step(rollout.id) is State.PAUSED
    assert "inconclusive" in (store.get(engine, rollout.id).waiting_for or "")


def test_a_new_driver_resumes_the_same_wave(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    """What a hub restart does: the next driver knows only the database."""
    on_old_release(engine, key, fleet)
    clock = Clock()
    rollout = store.create(engine, make_spec(), "alice", releases)
    assert rollout.id is not None
    first = driver(engine, key, clock)
    run_wave(engine, first, clock, rollout.id, 0)
    clock.advance(seconds=61)
    first.step(rollout.id)
    run_wave(engine, first, clock, rollout.id, 1)
    del first
    second = driver(engine, key, clock)
    assert store.get(engine, rollout.id).wave == 1
    clock.advance(seconds=61)
    second.step(rollout.id)
    assert store.get(engine, rollout.id).wave == 2
    second.step(rollout.id)  # opens wave 3 (index 2)
    assert len([m for m in members(engine, rollout.id) if m.notified_at]) == 5 + 20


def test_offline_devices_time_out_are_listed_and_late_reports_count(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    spec = make_spec(
        wave_counts=[10, 40], wave_percent=None,
        install={"min_success_ratio": 0.7, "max_timed_out_ratio": 0.3},
    )  # fmt: skip
    rollout = store.create(engine, spec, "a", releases)
    assert rollout.id is not None
    d = driver(engine, key, clock)
    d.step(rollout.id)
    wave = [m.device_id for m in members(engine, rollout.id, 0)]
    report(engine, wave[:8], UpdateEvent.HEALTHY, clock())
    clock.advance(seconds=120)
    assert d.step(rollout.id) is State.WAITING_GATE  # two still within their timeout
    clock.advance(seconds=600)
    assert d.step(rollout.id) is State.RUNNING  # timed out, never blocks: 0.8 >= 0.7
    gate = audit.entries(engine, store.object_name(rollout.id))[-1]
    assert sorted(gate.details["timed_out"]) == sorted(wave[8:])
    # Back from a week offline: the late report counts in the wave's results.
    report(engine, wave[8:], UpdateEvent.HEALTHY, clock() + timedelta(days=7))
    from hub.rollouts.status import describe

    first = describe(engine, rollout.id)["waves"][0]
    assert (first["succeeded"], first["timed_out"]) == (10, 0)


def test_approval_needs_a_second_operator(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    rollout = store.create(engine, make_spec(approval_required=True), "alice", releases)
    assert rollout.id is not None
    d = driver(engine, key, clock)
    assert d.step(rollout.id) is State.WAITING_APPROVAL
    assert d.step(rollout.id) is State.WAITING_APPROVAL
    assert all(desired_version(engine, x) == "1.0.0" for x in fleet)  # nothing opened
    try:
        actions.approve(engine, rollout.id, "alice")
        raise AssertionError("the creator approved her own rollout")
    except actions.ActionRefused as exc:
        assert "second operator" in str(exc)
    actions.approve(engine, rollout.id, "bob")
    d.step(rollout.id)
    notified = [m.device_id for m in members(engine, rollout.id) if m.notified_at]
    assert len(notified) == 1 and desired_version(engine, notified[0]) == "2.0.0"
    entry = next(e for e in audit.entries(engine) if e.action == "approve")
    assert entry.actor == "bob"


def test_operator_actions_need_reasons_and_are_audited(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    rollout = store.create(engine, make_spec(), "alice", releases)
    assert rollout.id is not None
    d = driver(engine, key, clock)
    run_wave(engine, d, clock, rollout.id, 0)
    for act in (actions.pause, actions.abort):
        try:
            act(engine, rollout.id, "bob", "  ")
            raise AssertionError("no reason was accepted")
        except actions.ActionRefused as exc:
            assert "needs a reason" in str(exc)
    actions.pause(engine, rollout.id, "bob", "checking a customer complaint")
    clock.advance(hours=1)
    assert d.step(rollout.id) is State.PAUSED
    actions.resume(engine, rollout.id, "bob", None)
    actions.rollback(engine, rollout.id, "bob", "complaint confirmed", lambda: key, releases)
    assert all(desired_version(engine, x) == "1.0.0" for x in fleet)
    last = audit.entries(engine, store.object_name(rollout.id))[-1]
    assert (last.action, last.actor, last.reason) == ("rollback", "bob", "complaint confirmed")


def test_a_newer_rollout_supersedes_with_a_record(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    older = store.create(engine, make_spec(), "alice", releases)
    newer = store.create(engine, make_spec(target={"tags": {"ring": "canary"}}), "bob", releases)
    assert store.get(engine, older.id or 0).state == State.ABORTED
    entry = audit.entries(engine, store.object_name(older.id))[-1]
    assert entry.action == "supersede" and entry.details["superseded_by"] == newer.id
    assert len(members(engine, newer.id or 0)) == 10  # the tagged devices only


def test_devices_that_join_the_target_are_picked_up(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    from hub.fleet import registry

    clock = Clock()
    rollout = store.create(engine, make_spec(wave_counts=[50], wave_percent=None), "a", releases)
    assert rollout.id is not None
    d = driver(engine, key, clock)
    d.step(rollout.id)
    registry.enroll(engine, "box-new", group="shop")
    d.step(rollout.id)
    assert desired_version(engine, "box-new") == "2.0.0"


def _everything(engine: Engine) -> dict[str, object]:
    """Every row the driver could write: rollouts, waves, members, gates, audit, desired."""
    from sqlalchemy import text

    tables = [
        "rollouts", "rollout_waves", "rollout_devices", "rollout_gates",
        "audit_log", "desired_states",
    ]  # fmt: skip
    with engine.connect() as connection:
        return {
            t: sorted(map(repr, connection.execute(text(f"SELECT * FROM {t}")).all()))
            for t in tables
        }


def test_steps_that_find_nothing_changed_write_nothing(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    """The periodic step is idempotent: waiting for a soak, and after completion."""
    on_old_release(engine, key, fleet)
    clock = Clock()
    rollout = store.create(engine, make_spec(wave_percent=[100]), "alice", releases)
    assert rollout.id is not None
    d = driver(engine, key, clock)
    run_wave(engine, d, clock, rollout.id, 0)
    assert d.step(rollout.id) is State.WAITING_GATE
    before = _everything(engine)
    for _ in range(3):
        d.step_all()
    assert _everything(engine) == before
    clock.advance(seconds=61)
    d.step_all()
    assert store.get(engine, rollout.id).state == State.COMPLETED
    before = _everything(engine)
    for _ in range(3):
        d.step_all()
    assert _everything(engine) == before
