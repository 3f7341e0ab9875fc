"""An enrolled device turned hostile, against the hub's own broker, proved by delivery.

With its own valid certificate a device tries to join the hub's ingest share group (and so
swallow other devices' reports) and to connect under the client id of a hub client or of
another device (and so end their connections, wipe their sessions or take the QoS 1
messages queued for them). Every valid message must still arrive exactly once.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.protocol.topics import (
    HUB_DIRECTOR_CLIENT,
    HUB_INGEST_CLIENT,
    HUB_INGEST_FILTERS,
    DeviceTopic,
    device_topic,
)
from hub.broker import ManagedMosquitto
from hub.fleet.identity import DeviceCA
from hub.fleet.models import InstallEventRecord, ReceivedMessage
from hub.service import HubService
from tests.hub_broker.conftest import device_files, tls_client
from tests.hub_ingest.helpers import count, distinct_events, event, report, wait_count, wire
from tests.mqtt_broker import TestClient

EVENTS = 20
REPORTS = 5
# Long enough for a delivery on loopback (milliseconds), short enough to keep tests fast.
SILENCE_S = 0.5


def test_share_group_subscriptions_of_a_device_swallow_no_report(
    hub: HubService, tmp_path: Path
) -> None:
    assert hub.broker is not None
    ca = hub.authority.ca
    attacker = device_files(ca, tmp_path / "attacker", "dev-x")
    # Three memberships of the hub's group: the first stays as an offline persistent
    # session, the other two online. Each asks for a client id of its own.
    online: list[TestClient] = []
    for client_id in ("dev-x", "dev-x-2", "dev-x-3"):
        member = tls_client(hub.broker, client_id, attacker, persistent=True).connect()
        for topic_filter in HUB_INGEST_FILTERS:
            member.subscribe(topic_filter)
        if client_id == "dev-x":
            member.disconnect()
        else:
            online.append(member)
    try:
        sender = tls_client(hub.broker, "dev-b", device_files(ca, tmp_path / "b", "dev-b"))
        with sender:
            for n in range(EVENTS):
                sender.publish(*wire(event("dev-b", n)))
            for n in range(REPORTS):
                sender.publish(*wire(report("dev-b", "1.0.0", seconds=n)))
        assert wait_count(hub.engine, EVENTS + REPORTS, timeout_s=10) == EVENTS + REPORTS
        time.sleep(SILENCE_S)  # nothing more, nothing twice
        assert count(hub.engine, InstallEventRecord) == EVENTS == distinct_events(hub.engine)
        assert count(hub.engine, ReceivedMessage) == EVENTS + REPORTS
    finally:
        for member in online:
            member.disconnect()


class Watched:
    """A connected client whose connection drops are counted."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.drops = 0
        client.client.on_disconnect = self._dropped

    def _dropped(self, *_args: Any) -> None:
        self.drops += 1


def _connected_hub_client(broker: ManagedMosquitto, name: str) -> Watched:
    watched = Watched(tls_client(broker, name, broker.hub_client_files(name), persistent=True))
    watched.client.connect()
    return watched


@pytest.mark.parametrize("resume", [False, True], ids=["clean-start", "resume"])
@pytest.mark.parametrize("stolen_id", [HUB_INGEST_CLIENT, HUB_DIRECTOR_CLIENT, "dev-b"])
def test_a_device_cannot_take_another_clients_session(
    broker: ManagedMosquitto, ca: DeviceCA, tmp_path: Path, stolen_id: str, resume: bool
) -> None:
    desired_b = device_topic("dev-b", DeviceTopic.DESIRED)
    b_files = device_files(ca, tmp_path / "b", "dev-b")
    with tls_client(broker, "dev-b", b_files, persistent=True) as b:
        b.subscribe(desired_b)
    ingest = _connected_hub_client(broker, HUB_INGEST_CLIENT)
    director = _connected_hub_client(broker, HUB_DIRECTOR_CLIENT)
    try:
        ingest.client.subscribe("edge/v1/devices/+/events")
        # dev-b is offline: its persistent session queues this QoS 1 message.
        director.client.publish(desired_b, b"desired-for-b")

        attacker = tls_client(broker, stolen_id, device_files(ca, tmp_path / "a", "dev-a"))
        attacker.clean_start = not resume
        attacker.session_expiry_s = 3600
        attacker.connect()
        time.sleep(SILENCE_S)  # the broker has acted on the CONNECT
        attacker.disconnect()

        with tls_client(broker, "dev-c", device_files(ca, tmp_path / "c", "dev-c")) as c:
            c.publish(device_topic("dev-c", DeviceTopic.EVENTS), b"event-of-c")
        assert ingest.client.receive().payload == b"event-of-c"  # its subscription survived
        with pytest.raises(queue.Empty):
            ingest.client.receive(SILENCE_S)
        assert (ingest.drops, director.drops) == (0, 0), "a hub connection was taken over"
    finally:
        ingest.client.disconnect()
        director.client.disconnect()

    with tls_client(broker, "dev-b", b_files, persistent=True) as b_again:
        assert b_again.session_present
        assert b_again.receive().payload == b"desired-for-b"
        with pytest.raises(queue.Empty):
            b_again.receive(SILENCE_S)
