"""The serving hub publishes a rollout's signed states as soon as the driver has committed
them (Driver.on_signed wakes the desired-state rounds), not at the rounds' next tick:
proved by delivery to the device, with the tick an hour away."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.protocol.topics import DeviceTopic, device_topic
from hub import service as service_module
from hub.fleet import desired, registry
from hub.rollouts.driver import Driver
from hub.service import HubService
from tests.hub_broker.conftest import device_files, serving_hub, tls_client

NO_TICK_S = 3600.0


@pytest.fixture
def hub_without_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubService]:
    monkeypatch.setattr(service_module, "FLEET_JOB_SECONDS", NO_TICK_S)
    yield from serving_hub(tmp_path)


def test_the_drivers_signed_states_reach_the_device_without_waiting_for_a_tick(
    hub_without_ticks: HubService, tmp_path: Path
) -> None:
    hub = hub_without_ticks
    assert hub.desired_rounds is not None and hub.scheduler is not None and hub.broker
    assert hub.desired_rounds.flush(10), "the start-up round did not end"
    registry.enroll(hub.engine, "dev-a")
    device = tls_client(hub.broker, "dev-a", device_files(hub.authority.ca, tmp_path, "dev-a"))
    with device:
        device.subscribe(device_topic("dev-a", DeviceTopic.DESIRED))
        desired.assign(
            hub.engine,
            hub.authority.director.private_key(),
            ["dev-a"],
            "chat",
            "1.0.0",
            listed=lambda _m, _v: True,
        )
        driver = hub.scheduler.get_job("rollouts").func.__self__
        assert isinstance(driver, Driver)
        driver.on_signed()  # what the driver calls after committing a chunk of a wave
        message = device.receive(timeout_s=10)
    assert message.topic == device_topic("dev-a", DeviceTopic.DESIRED)
    assert desired.unpublished(hub.engine) == []
