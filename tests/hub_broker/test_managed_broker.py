"""The managed Mosquitto fences each device in, checked by delivery, never by acks."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from edge_agent.protocol.topics import (
    HUB_DIRECTOR_CLIENT,
    HUB_INGEST_FILTERS,
    HUB_USERNAME,
    TELEMETRY_TOPIC,
    DeviceTopic,
    device_topic,
    group_topic,
)
from hub.broker import ManagedMosquitto
from hub.fleet.identity import (
    DeviceCA,
    EnrollmentTokens,
    TlsFiles,
    enroll,
    make_csr,
    new_key,
)
from tests.hub_broker.conftest import device_files, save_files, tls_client
from tests.mqtt_broker import TestClient

# Long enough for a delivery on loopback (milliseconds), short enough to keep the suite fast.
SILENCE_S = 0.5
RECONNECT_WINDOW_S = 2.5


def assert_nothing(client: TestClient) -> None:
    with pytest.raises(queue.Empty):
        message = client.receive(SILENCE_S)
        pytest.fail(f"{client.client_id} received {message.topic}: {message.payload!r}")


def test_device_reports_and_hub_receives_on_shared_subscription(
    broker: ManagedMosquitto, ca: DeviceCA, tmp_path: Path
) -> None:
    files = device_files(ca, tmp_path, "dev-a")
    with (
        tls_client(broker, HUB_USERNAME, broker.hub_client_files()) as hub,
        tls_client(broker, "dev-a", files) as device,
    ):
        for topic_filter in HUB_INGEST_FILTERS:
            hub.subscribe(topic_filter)
        device.publish(device_topic("dev-a", DeviceTopic.REPORTED), b'{"state": 1}')
        device.publish(TELEMETRY_TOPIC, b'{"t": 1}')
        got = {hub.receive().topic: None, hub.receive().topic: None}
        assert set(got) == {device_topic("dev-a", DeviceTopic.REPORTED), TELEMETRY_TOPIC}


def test_device_cannot_speak_for_or_read_another(
    broker: ManagedMosquitto, ca: DeviceCA, tmp_path: Path
) -> None:
    a_files = device_files(ca, tmp_path, "dev-a")
    b_files = device_files(ca, tmp_path, "dev-b")
    with tls_client(broker, HUB_USERNAME, broker.hub_client_files()) as hub:
        hub.subscribe("edge/v1/#")
        # Retained desired state for both devices, published by the hub.
        hub.client.publish(device_topic("dev-b", DeviceTopic.DESIRED), b"for-b", 1, retain=True)
        hub.client.publish(device_topic("dev-a", DeviceTopic.DESIRED), b"for-a", 1, retain=True)
        while True:  # drain the hub's own echoes
            try:
                hub.receive(SILENCE_S)
            except queue.Empty:
                break
        with tls_client(broker, "dev-a", a_files) as a, tls_client(broker, "dev-b", b_files) as b:
            # A reads its own desired state, never B's (both retained).
            a.subscribe(device_topic("dev-a", DeviceTopic.DESIRED))
            a.subscribe(device_topic("dev-b", DeviceTopic.DESIRED))
            assert a.receive().payload == b"for-a"
            assert_nothing(a)
            # A publishing on B's topics reaches neither B nor the hub.
            b.subscribe(device_topic("dev-b", DeviceTopic.REPORTED))
            for kind in (DeviceTopic.REPORTED, DeviceTopic.EVENTS, DeviceTopic.DESIRED):
                a.client.publish(device_topic("dev-b", kind), b"forged", qos=1)
            # Its own report still goes through: the channel works, only the forgery is gone.
            a.publish(device_topic("dev-a", DeviceTopic.REPORTED), b"mine")
            assert hub.receive().payload == b"mine"
            assert_nothing(hub)
            assert_nothing(b)
            b.subscribe(device_topic("dev-b", DeviceTopic.DESIRED))
            assert b.receive().payload == b"for-b"


def test_client_without_certificate_is_refused(broker: ManagedMosquitto) -> None:
    client = TestClient(broker, "nobody", ca_file=broker.ca.ca_cert_path)
    try:
        # paho's TLS handshake "succeeds" before the broker checks the missing certificate;
        # what never comes is a successful CONNACK.
        with pytest.raises((TimeoutError, ConnectionError, OSError)):
            client.connect(timeout_s=1.0)
    finally:
        client.disconnect()


def test_certificate_from_another_ca_is_refused(broker: ManagedMosquitto, tmp_path: Path) -> None:
    rogue = DeviceCA(tmp_path / "rogue-ca")
    files = device_files(rogue, tmp_path / "rogue", "dev-a")
    client = TestClient(
        broker, "dev-a", ca_file=broker.ca.ca_cert_path, cert_file=files.cert, key_file=files.key
    )
    try:
        with pytest.raises((TimeoutError, ConnectionError, OSError)):
            client.connect(timeout_s=1.0)
    finally:
        client.disconnect()


def refused(broker: ManagedMosquitto, client_id: str, files: TlsFiles) -> bool:
    client = tls_client(broker, client_id, files)
    try:
        client.connect(timeout_s=1.0)
    except (TimeoutError, ConnectionError, OSError):
        return True
    finally:
        client.disconnect()
    return False


def test_revoked_device_is_cut_off_and_cannot_reconnect(
    broker: ManagedMosquitto, ca: DeviceCA, tmp_path: Path
) -> None:
    files = device_files(ca, tmp_path, "dev-revoked")
    desired = device_topic("dev-revoked", DeviceTopic.DESIRED)
    with (
        tls_client(broker, HUB_USERNAME, broker.hub_client_files()) as hub,
        tls_client(broker, "dev-revoked", files, persistent=True) as device,
    ):
        device.subscribe(desired)
        hub.publish(desired, b"before")
        assert device.receive().payload == b"before"

        assert broker.revoke("dev-revoked") == 1  # CRL rewritten, the broker cuts it off
        assert ca.is_revoked("dev-revoked")
        # The open connection is gone and paho's reconnects are refused: its persistent
        # session would deliver this message after any reconnect; nothing arrives.
        with tls_client(
            broker, HUB_DIRECTOR_CLIENT, broker.hub_client_files(HUB_DIRECTOR_CLIENT)
        ) as hub2:
            hub2.publish(desired, b"after")
        # Long enough for paho's reconnect (1 s after a drop) to have got it, were it let in.
        with pytest.raises(queue.Empty):
            device.receive(RECONNECT_WINDOW_S)
        assert not device.client.is_connected()
    assert refused(broker, "dev-revoked", files)
    # Others are unaffected.
    assert not refused(broker, "dev-a", device_files(ca, tmp_path, "dev-a"))


def test_crl_takes_effect_on_reload(broker: ManagedMosquitto, ca: DeviceCA, tmp_path: Path) -> None:
    files = device_files(ca, tmp_path, "dev-c")
    assert not refused(broker, "dev-c", files)
    ca.revoke("dev-c")
    broker.reload()  # SIGHUP: the broker rereads the CRL
    deadline = 20
    while not refused(broker, "dev-c", files):  # the signal is handled asynchronously
        deadline -= 1
        assert deadline, f"still accepted after the reload: {broker.log()[-1500:]}"
    assert "certificate verify failed" in broker.log()


def test_enrollment_token_to_connected_device(
    broker: ManagedMosquitto, ca: DeviceCA, tmp_path: Path
) -> None:
    tokens = EnrollmentTokens(tmp_path / "tokens.json")
    token = tokens.create("dev-new")
    key = new_key()  # made on the device; the hub only sees the CSR
    cert = enroll(ca, tokens, token, make_csr(key, "dev-new"))
    files = save_files(ca, tmp_path / "device", "dev-new", key, cert)
    with (
        tls_client(broker, HUB_USERNAME, broker.hub_client_files()) as hub,
        tls_client(broker, "dev-new", files) as device,
    ):
        hub.subscribe(HUB_INGEST_FILTERS[0])
        device.publish(device_topic("dev-new", DeviceTopic.REPORTED), b"hello")
        assert hub.receive().topic == device_topic("dev-new", DeviceTopic.REPORTED)


def test_group_announcements_follow_membership_after_reload(
    broker: ManagedMosquitto, ca: DeviceCA, tmp_path: Path
) -> None:
    files = device_files(ca, tmp_path, "dev-a")
    lab, field = group_topic("lab"), group_topic("field")
    with (
        tls_client(broker, HUB_USERNAME, broker.hub_client_files()) as hub,
        tls_client(broker, "dev-a", files) as device,
    ):
        device.subscribe(lab)
        device.subscribe(field)
        hub.publish(lab, b"lab-1")
        hub.publish(field, b"field-1")
        assert device.receive().payload == b"lab-1"
        assert_nothing(device)  # not in "field"

        broker.set_device_groups({"dev-a": ["field"]})  # ACL rewritten, SIGHUP
        deadline = 20
        while True:  # the reload is asynchronous: publish until the new ACL holds
            hub.publish(field, b"field-2")
            try:
                assert device.receive(0.1).payload == b"field-2"
                break
            except queue.Empty:
                deadline -= 1
                assert deadline, "the new group never reached the device"
        hub.publish(lab, b"lab-2")
        assert_nothing(device)
