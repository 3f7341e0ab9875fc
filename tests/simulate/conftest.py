"""A SimulationHub (real SQLite, managed Mosquitto, publisher, ingest) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.broker import BrokerMissing
from hub.simulate.harness import SimulationHub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[SimulationHub]:
    try:
        simulation = SimulationHub(tmp_path / "hub")
    except BrokerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with simulation:
        yield simulation
