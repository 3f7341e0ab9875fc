"""The director's signed rollback end to end: a real `edge-agent serve` enrolled with a real
`edge-hub serve` (managed Mosquitto) runs 1.1.0 after 1.0.0. A plain older assignment is
refused by its version floor; the same assignment signed as a rollback from 1.1.0
re-activates the kept 1.0.0 and lowers the floor to exactly it, also when the power was cut
between lowering the floor and the swap."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from edge_agent.store import ModelStore
from hub import db
from hub.fleet import desired
from hub.fleet.director import DirectorKey
from tests.fleet.processes import active_on_hub, wait_for
from tests.fleet.test_hub_and_agent import Device, Hub, enrolled_on_first_release, running_hub


@pytest.fixture
def hub(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Hub]:
    yield from running_hub(
        db.sqlite_url(tmp_path / "hub.sqlite3"), tmp_path, tiny_model_dir, "managed"
    )


@dataclass
class OnNew:
    """dev-1 serving 1.1.0 after 1.0.0 (floor 1.1.0, 1.0.0 kept)."""

    hub: Hub
    device: Device
    engine: Engine
    key: Ed25519PrivateKey

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.device.data)

    def assign(self, version: str, rolled_back_from: str | None = None) -> None:
        desired.assign(
            self.engine, self.key, ["dev-1"], "tiny", version, listed=lambda _m, _v: True,
            rolled_back_from=rolled_back_from,
        )  # fmt: skip

    def wait_active(self, version: str, what: str) -> None:
        wait_for(
            lambda: active_on_hub(self.hub.database_url, "dev-1") == version,
            f"{what}\n{self.device.log()}",
        )
        active = self.store.active("tiny")
        assert active is not None and active.version == version


@pytest.fixture
def on_new(hub: Hub, tmp_path: Path) -> Iterator[OnNew]:
    device = enrolled_on_first_release(hub, tmp_path)
    engine = db.make_engine(hub.database_url)
    made = OnNew(hub, device, engine, DirectorKey(hub.root / "keys").private_key())
    try:
        device.serve("tiny")
        made.wait_active("1.0.0", "first report")
        made.assign("1.1.0")
        made.wait_active("1.1.0", "1.1.0 installed")
        assert str(made.store.floor("tiny")) == "1.1.0"
        yield made
    finally:
        device.stop()
        engine.dispose()


def test_only_a_signed_rollback_takes_a_real_agent_below_its_floor(on_new: OnNew) -> None:
    device, store, assign = on_new.device, on_new.store, on_new.assign
    assign("1.0.0")  # signed, but no rollback statement: the floor holds
    wait_for(
        lambda: "carries no signed rollback" in device.log(),
        f"the plain older assignment refused\n{device.log()}",
        30,
    )
    time.sleep(1)  # a retry or two of the update-check job
    active = store.active("tiny")
    assert active is not None and active.version == "1.1.0"
    assert str(store.floor("tiny")) == "1.1.0"

    assign("1.0.0", rolled_back_from="1.1.0")
    on_new.wait_active("1.0.0", "the signed rollback to the kept 1.0.0")
    assert str(store.floor("tiny")) == "1.0.0"
    assert "rolled back from 1.1.0 to 1.0.0 by the hub" in device.log()


def test_a_power_cut_between_the_floor_and_the_swap_finishes_the_rollback(
    on_new: OnNew,
) -> None:
    process = on_new.device.process
    assert process is not None
    process.kill()  # no clean shutdown
    process.wait(30)
    # What the rollback wrote before the cut: the floor down, the swap not yet done.
    on_new.store.lower_floor("tiny", "1.0.0")
    on_new.assign("1.0.0", rolled_back_from="1.1.0")
    on_new.device.serve("tiny")
    on_new.wait_active("1.0.0", "the rollback finished after the restart")
    assert str(on_new.store.floor("tiny")) == "1.0.0"
