"""A rollout's rollback signs "back to the previous release, rolled back from this one" only
to members that are still assigned this rollout's release: a member an operator moved on
to a newer release meanwhile keeps it (no older assignment, no rollback statement)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from hub.db import session
from hub.fleet import desired
from hub.fleet.models import DesiredRecord
from hub.rollouts import actions, audit, store
from tests.hub_rollouts.conftest import Clock, releases
from tests.hub_rollouts.test_driver import driver, make_spec, members, on_old_release


def test_a_member_assigned_a_newer_release_since_is_not_rolled_back(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    clock = Clock()
    spec = make_spec(wave_counts=[10, 40], wave_percent=None)
    rollout = store.create(engine, spec, "alice", releases)
    assert rollout.id is not None
    driver(engine, key, clock).step(rollout.id)
    wave = [m.device_id for m in members(engine, rollout.id, 0)]
    moved_on = wave[0]
    desired.assign(engine, key, [moved_on], "chat", "3.0.0", listed=lambda _m, _v: True)
    actions.rollback(engine, rollout.id, "bob", "errors up", lambda: key, releases)
    with session(engine) as db:
        records = {d: db.get(DesiredRecord, d) for d in wave}
    kept = records[moved_on]
    assert kept is not None and kept.models == {"chat": "3.0.0"}
    assert '"rollbacks"' not in kept.signed
    for device_id in wave[1:]:
        record = records[device_id]
        assert record is not None and record.models == {"chat": "1.0.0"}
        assert '"rollbacks":{"chat":"2.0.0"}' in record.signed.replace(" ", "")
    entry = audit.entries(engine, store.object_name(rollout.id))[-1]
    assert entry.details["reverted"] == {"1.0.0": 9}
    assert "3.0.0" in entry.details["kept"][moved_on]


def test_a_rollback_retried_after_a_crash_marks_what_it_signed_before(
    engine: Engine, fleet: list[str], key: Ed25519PrivateKey
) -> None:
    on_old_release(engine, key, fleet)
    spec = make_spec(wave_counts=[10, 40], wave_percent=None)
    rollout = store.create(engine, spec, "alice", releases)
    assert rollout.id is not None
    driver(engine, key, Clock()).step(rollout.id)
    wave = [m.device_id for m in members(engine, rollout.id, 0)]
    # The first try signed the states, then the hub stopped before marking the members.
    desired.assign(
        engine, key, wave, "chat", "1.0.0", listed=lambda _m, _v: True, rolled_back_from="2.0.0"
    )
    sequences = {d: r.sequence for d, r in _records(engine, wave).items()}
    actions.rollback(engine, rollout.id, "bob", "errors up", lambda: key, releases)
    assert {d: r.sequence for d, r in _records(engine, wave).items()} == sequences
    assert all(m.rolled_back_at is not None for m in members(engine, rollout.id, 0))
    entry = audit.entries(engine, store.object_name(rollout.id))[-1]
    assert entry.details["kept"] == {}


def _records(engine: Engine, device_ids: list[str]) -> dict[str, DesiredRecord]:
    with session(engine) as db:
        found = {d: db.get(DesiredRecord, d) for d in device_ids}
    return {d: r for d, r in found.items() if r is not None}
