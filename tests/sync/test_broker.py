"""The private Mosquitto works as the sync design needs: MQTT 5 from paho, QoS 1, and a
persistent session that keeps a device's messages while it is away, across a restart."""

from __future__ import annotations

import pytest

from tests.mqtt_broker import MosquittoBroker, TestClient

SESSION_EXPIRY_S = 3600
# A killed broker keeps only what its autosave wrote, every 30 min by default. Saving on
# every change narrows that, but Mosquitto sends PUBACK before it saves: a kill right after
# the PUBACK still loses the message (measured: 35 of 40 runs).
SAVE_ON_EVERY_CHANGE = ("autosave_interval 1", "autosave_on_changes true")


def test_publish_qos1_and_receive(mqtt_broker: MosquittoBroker) -> None:
    with TestClient(mqtt_broker, "hub") as hub, TestClient(mqtt_broker, "device-1") as device:
        hub.subscribe("devices/+/state", qos=1)
        device.publish("devices/device-1/state", b'{"ok": true}', qos=1)

        message = hub.receive()
        assert message.topic == "devices/device-1/state"
        assert message.payload == b'{"ok": true}'
        assert message.qos == 1


@pytest.mark.parametrize(
    ("mqtt_broker", "hard"),
    [((), False), (SAVE_ON_EVERY_CHANGE, True)],
    indirect=["mqtt_broker"],
    ids=["stop-start", "kill-9"],
)
def test_persistent_session_gets_what_was_sent_while_away_across_a_restart(
    mqtt_broker: MosquittoBroker, hard: bool
) -> None:
    def device() -> TestClient:
        return TestClient(
            mqtt_broker, "device-1", clean_start=False, session_expiry_s=SESSION_EXPIRY_S
        )

    with device() as first:
        assert first.session_present is False
        first.subscribe("devices/device-1/desired", qos=1)

    with TestClient(mqtt_broker, "hub") as hub:
        hub.publish("devices/device-1/desired", b"release 1.2.0", qos=1)
        # One more round trip: Mosquitto saves at the end of the loop pass that handled the
        # publish, so once a later packet is answered the save is on disk.
        hub.publish("test/barrier", b"", qos=1)

    port = mqtt_broker.port
    mqtt_broker.restart(hard=hard)
    assert mqtt_broker.port == port

    with device() as again:  # no new subscription: the session kept it
        assert again.session_present is True
        message = again.receive()
        assert (message.topic, message.payload) == ("devices/device-1/desired", b"release 1.2.0")
        assert message.qos == 1
