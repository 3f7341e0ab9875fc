"""The director's signed rollback on a real store: below the floor only to the kept
previous version, only from the release the statement names, and the floor goes down to
exactly that version. (Signature, sequence and expiry of the statement: tests/simulate.)"""

from __future__ import annotations

import pytest

from edge_agent.runtime import LoadedModel, RuntimeSettings
from edge_agent.updates.errors import Refused
from edge_agent.updates.reactivate import reactivate_kept
from tests.updates.conftest import Fleet


@pytest.fixture
def on_new(fleet: Fleet) -> Fleet:
    """1.0.0 installed, then 1.1.0 activated and healthy: floor 1.1.0, 1.0.0 kept."""
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()
    assert str(fleet.store.floor("tiny")) == "1.1.0"
    return fleet


def test_a_signed_rollback_reactivates_the_kept_version_and_lowers_the_floor(
    on_new: Fleet,
) -> None:
    with on_new.source() as releases:
        outcome = reactivate_kept(
            on_new.manager(), releases, "tiny", "1.0.0", rolled_back_from="1.1.0"
        )
    store = on_new.store
    active = store.active("tiny")
    assert (outcome.version, outcome.changed) == ("1.0.0", True)
    assert active is not None and active.version == "1.0.0"
    assert (active.path / "genai_config.json").read_bytes() == (
        on_new.model_dir / "genai_config.json"
    ).read_bytes()
    assert str(store.floor("tiny")) == "1.0.0"
    LoadedModel.load("t", active.path, RuntimeSettings())
    # The floor went down to exactly the kept version: a newer release installs again.
    on_new.repo.publish(on_new.variant("v3", top_k=9), "tiny", "1.2.0")
    assert on_new.update("1.2.0").version == "1.2.0"


@pytest.mark.parametrize(
    ("wanted", "rolled_back_from", "error"),
    [
        ("1.0.0", None, r"carries no signed rollback"),
        ("1.0.0", "1.0.5", r"rollback of tiny is from 1\.0\.5, but 1\.1\.0 is active"),
        ("0.9.0", "1.1.0", r"asks for 0\.9\.0, but the version this device kept .* is 1\.0\.0"),
    ],
)
def test_a_rollback_that_does_not_match_the_device_changes_nothing(
    on_new: Fleet, wanted: str, rolled_back_from: str | None, error: str
) -> None:
    before = on_new.snapshot()
    with on_new.source() as releases, pytest.raises(Refused, match=error):
        reactivate_kept(
            on_new.manager(), releases, "tiny", wanted, rolled_back_from=rolled_back_from
        )
    assert on_new.snapshot() == before
