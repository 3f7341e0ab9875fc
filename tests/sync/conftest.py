"""A private Mosquitto per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_broker import BrokerMissing, MosquittoBroker


@pytest.fixture
def mqtt_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MosquittoBroker]:
    """A running broker on a free loopback port, stopped after the test. Extra config lines
    come from indirect parametrisation: `parametrize("mqtt_broker", [(line, ...)], indirect=True)`.
    """
    extra_config: tuple[str, ...] = getattr(request, "param", ())
    try:
        broker = MosquittoBroker(tmp_path / "broker", extra_config=extra_config)
    except BrokerMissing as exc:
        # Never a silent skip: these tests are the proof that nothing is lost.
        pytest.fail(str(exc), pytrace=False)
    with broker:
        yield broker
