"""Attacks on the director's signed rollback, on a real store and a real signed repository:
more than one step back, a release revoked since, a model the device does not run, and a
power cut between lowering the floor and the swap. (A statement for another device or
replayed: its signature, device id and sequence, tests/protocol/test_desired.py.)"""

from __future__ import annotations

import pytest

from edge_agent.updates.errors import Refused
from edge_agent.updates.reactivate import reactivate_kept
from edge_agent.updates.rollback import is_rollback
from tests.updates.conftest import Fleet


@pytest.fixture
def on_new(fleet: Fleet) -> Fleet:
    """1.0.0 installed, then 1.1.0 activated and healthy: floor 1.1.0, 1.0.0 kept."""
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()
    return fleet


def _rollback(fleet: Fleet, model: str, version: str, rolled_back_from: str) -> str | None:
    with fleet.source() as releases:
        return reactivate_kept(
            fleet.manager(), releases, model, version, rolled_back_from=rolled_back_from
        ).version


def test_a_second_statement_cannot_go_back_a_second_step(on_new: Fleet) -> None:
    on_new.repo.publish(on_new.variant("v3", top_k=9), "tiny", "1.2.0")
    on_new.update()
    assert _rollback(on_new, "tiny", "1.1.0", "1.2.0") == "1.1.0"
    before = on_new.snapshot()
    # 1.0.0 is still on disk nowhere near a pointer: no kept version after a rollback.
    with pytest.raises(Refused, match=r"kept to roll back to is none"):
        _rollback(on_new, "tiny", "1.0.0", "1.1.0")
    assert on_new.snapshot() == before and str(on_new.store.floor("tiny")) == "1.1.0"


def test_a_release_revoked_since_is_not_reactivated(on_new: Fleet) -> None:
    on_new.repo.revoke("tiny", "1.0.0")
    before = on_new.snapshot()
    with pytest.raises(Refused, match=r"not listed in the signed targets"):
        _rollback(on_new, "tiny", "1.0.0", "1.1.0")
    assert on_new.snapshot() == before  # floor still 1.1.0, 1.1.0 active


def test_a_statement_for_a_model_this_device_does_not_run_changes_nothing(
    on_new: Fleet,
) -> None:
    before = on_new.snapshot()
    assert not is_rollback("1.0.0", on_new.store.floor("other"), None)  # a plain install
    with pytest.raises(Refused, match=r"None is active"):
        _rollback(on_new, "other", "1.0.0", "1.1.0")
    assert on_new.snapshot() == before


def test_a_power_cut_after_the_floor_went_down_finishes_the_same_rollback(
    on_new: Fleet,
) -> None:
    store = on_new.store
    store.lower_floor("tiny", "1.0.0")  # what reactivate_kept wrote before the cut
    active = store.active("tiny")
    assert active is not None and active.version == "1.1.0"
    # On restart the same desired state is applied: the floor alone no longer says it is a
    # rollback, the active version does, so it goes through the signed rule again.
    assert is_rollback("1.0.0", store.floor("tiny"), active.version)
    # Without the statement (an attacker's older assignment) the floor it left helps nobody.
    with pytest.raises(Refused, match=r"older than the active 1\.1\.0"):
        on_new.update("1.0.0")
    assert _rollback(on_new, "tiny", "1.0.0", "1.1.0") == "1.0.0"
    assert str(on_new.store.floor("tiny")) == "1.0.0"
