"""Simulated devices in worker processes (the rollout benchmark's fleets): each worker's
devices connect with their own certificates, verify their signed desired state, and the
parent gets their sequences and timestamps back."""

from __future__ import annotations

import time

import pytest

from hub.simulate import director_public_keys
from hub.simulate.harness import SimulationHub
from hub.simulate.processes import FleetProcesses

MODEL = "chat"


def test_devices_in_two_processes_verify_their_signed_state(hub: SimulationHub) -> None:
    enrolled = hub.enroll(12, group="lab")
    ids = [e.device_id for e in enrolled]
    with FleetProcesses(hub.address, director_public_keys(hub.director_key)) as fleet:
        fleet.add(enrolled, active={MODEL: "1.0.0"})
        fleet.connect(timeout_s=60)
        opened = time.monotonic()
        hub.assign(ids, MODEL, "1.1.0")
        hub.publish_pending()
        fleet.wait_sequence(dict.fromkeys(ids, 1), timeout_s=60)
        snapshot = fleet.snapshot()
        cpu = fleet.loop_cpu_seconds()
    assert sorted(snapshot) == sorted(ids)
    assert all(s.last_sequence == 1 and s.refusals == 0 for s in snapshot.values())
    # Timestamps from the workers' monotonic clocks compare with the parent's.
    assert all(opened <= (s.verified_at or 0.0) <= time.monotonic() for s in snapshot.values())
    assert len(cpu) == 2 and all(c > 0 for c in cpu)


def test_a_state_signed_by_an_untrusted_key_is_refused_in_the_workers(
    hub: SimulationHub,
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    enrolled = hub.enroll(4, group="lab")
    ids = [e.device_id for e in enrolled]
    stranger = director_public_keys(Ed25519PrivateKey.generate())
    with FleetProcesses(hub.address, stranger) as fleet:
        fleet.add(enrolled, active={MODEL: "1.0.0"})
        fleet.connect(timeout_s=60)
        hub.assign(ids, MODEL, "1.1.0")
        hub.publish_pending()
        with pytest.raises(RuntimeError, match="not within"):
            fleet.wait_sequence(dict.fromkeys(ids, 1), timeout_s=3)
        snapshot = fleet.snapshot()
    assert all(s.last_sequence == 0 and s.refusals >= 1 for s in snapshot.values())


def test_bad_process_count_is_refused(hub: SimulationHub) -> None:
    with pytest.raises(ValueError, match="processes must be at least 1"):
        FleetProcesses(hub.address, director_public_keys(hub.director_key), processes=0)
