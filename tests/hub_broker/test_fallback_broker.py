"""The embedded fallback broker over real sockets with paho clients: what the fleet needs of
it (sessions that outlive a connection, retained desired state, revocation without losing
everyone else's session), how it refuses bad clients, and when the hub runs it."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.protocol import MAX_PACKET_BYTES
from edge_agent.protocol.topics import DeviceTopic, device_topic
from hub.broker import BrokerMissing, EmbeddedBroker, ManagedMosquitto, managed_broker
from hub.config import BrokerConfig, HubConfig
from hub.fleet.identity import DeviceCA
from tests.hub_broker.conftest import device_files, tls_client
from tests.mqtt_broker import free_port

SILENCE_S = 0.5


def test_persistent_session_gets_what_was_published_while_it_was_away(
    fallback: EmbeddedBroker, ca: DeviceCA, tmp_path: Path
) -> None:
    files = device_files(ca, tmp_path, "dev-a")
    reported = device_topic("dev-a", DeviceTopic.REPORTED)
    hub = tls_client(fallback, "hub-ingest", fallback.hub_client_files(), persistent=True)
    with hub:
        hub.subscribe(f"$share/ingest/{reported}")
    with tls_client(fallback, "dev-a", files) as device:
        for n in range(50):
            device.publish(reported, str(n).encode())
    again = tls_client(fallback, "hub-ingest", fallback.hub_client_files(), persistent=True)
    with again:
        assert again.session_present
        got = [int(again.receive().payload) for _ in range(50)]
        assert got == list(range(50))
        with pytest.raises(queue.Empty):
            again.receive(SILENCE_S)


def test_retained_desired_state_waits_for_the_device(
    fallback: EmbeddedBroker, ca: DeviceCA, tmp_path: Path
) -> None:
    desired = device_topic("dev-a", DeviceTopic.DESIRED)
    with tls_client(fallback, "hub-publisher", fallback.hub_client_files()) as hub:
        hub.client.publish(desired, b"v1", qos=1, retain=True).wait_for_publish(5)
        hub.client.publish(desired, b"v2", qos=1, retain=True).wait_for_publish(5)
    with tls_client(fallback, "dev-a", device_files(ca, tmp_path, "dev-a")) as device:
        device.subscribe(desired)
        message = device.receive()
        assert (message.payload, message.retain) == (b"v2", True)


def test_revocation_cuts_one_device_off_and_keeps_every_other_session(
    fallback: EmbeddedBroker, ca: DeviceCA, tmp_path: Path
) -> None:
    """The fallback keeps sessions in memory: a revocation reloads, never restarts."""
    keep = device_files(ca, tmp_path, "dev-keep")
    desired = device_topic("dev-keep", DeviceTopic.DESIRED)
    with tls_client(fallback, "dev-keep", keep, persistent=True) as device:
        device.subscribe(desired)
    device_files(ca, tmp_path, "dev-gone")
    assert fallback.revoke("dev-gone") == 1
    with tls_client(fallback, "hub", fallback.hub_client_files()) as hub:
        hub.publish(desired, b"queued while away")
    with tls_client(fallback, "dev-keep", keep, persistent=True) as device:
        assert device.session_present
        assert device.receive().payload == b"queued while away"
    assert "reloaded the CRL" in fallback.log()


def test_oversized_and_qos2_publishers_are_disconnected_and_others_go_on(
    fallback: EmbeddedBroker, ca: DeviceCA, tmp_path: Path
) -> None:
    files = device_files(ca, tmp_path, "dev-a")
    topic = device_topic("dev-a", DeviceTopic.REPORTED)
    with tls_client(fallback, "hub", fallback.hub_client_files()) as hub:
        hub.subscribe(topic)
        for payload, qos in ((b"x" * (MAX_PACKET_BYTES + 1), 1), (b"two", 2)):
            with tls_client(fallback, "dev-a", files) as device:
                device.client.publish(topic, payload, qos=qos)
                deadline = time.monotonic() + 5
                while device.client.is_connected() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert not device.client.is_connected()
        with pytest.raises(queue.Empty):
            hub.receive(SILENCE_S)
        with tls_client(fallback, "dev-a", files) as device:
            device.publish(topic, b"fine")
        assert hub.receive().payload == b"fine"
    log = fallback.log()
    assert f"a packet over the {MAX_PACKET_BYTES}-byte limit" in log
    assert "QoS 2 publish (maximum is 1)" in log


def test_refuses_to_listen_beyond_loopback(ca: DeviceCA, tmp_path: Path) -> None:
    tls = ca.server_files
    run = subprocess.run(
        [sys.executable, "-m", "hub.broker.fallback", "--host", "0.0.0.0", "--port", "1",
         "--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key),
         "--crl", str(ca.crl_path), "--log", str(tmp_path / "log")],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "loopback only" in (tmp_path / "log").read_text()


def test_stops_when_the_hub_is_killed(ca: DeviceCA, tmp_path: Path) -> None:
    """A hub killed outright (SIGKILL) cannot stop its child: the broker notices."""
    port = free_port()
    script = (
        "import sys, time; from pathlib import Path; from hub.broker import EmbeddedBroker; "
        "from hub.fleet.identity import DeviceCA; "
        f"b = EmbeddedBroker(Path({str(tmp_path / 'b')!r}), DeviceCA(Path({str(ca.folder)!r})), "
        f"port={port}); b.start(); print(b._process._process.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    with parent.stdout:
        child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the fallback broker outlived its hub"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return status != "Z"


def hub_config(tmp_path: Path, **broker: object) -> HubConfig:
    return HubConfig(broker=BrokerConfig(data_dir=tmp_path / "broker", **broker))  # type: ignore[arg-type]


def test_hub_falls_back_loudly_where_mosquitto_is_missing(
    ca: DeviceCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("hub.broker.mosquitto.SEARCH_DIRS", (tmp_path / "empty",))
    with caplog.at_level(logging.WARNING):
        broker = managed_broker(hub_config(tmp_path, port=free_port()), ca)
        assert isinstance(broker, EmbeddedBroker)
        with broker, tls_client(broker, "hub", broker.hub_client_files()) as hub:
            hub.publish("edge/v1/ping", b"up")
    text = caplog.text
    assert "Mosquitto is not installed" in text and "falling back to the embedded broker" in text
    assert "ACLs and persistence are OFF" in text


def test_no_fallback_for_a_hub_that_listens_beyond_loopback(
    ca: DeviceCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("hub.broker.mosquitto.SEARCH_DIRS", (tmp_path / "empty",))
    with pytest.raises(BrokerMissing, match=r"loopback only.*host is 0\.0\.0\.0") as refused:
        managed_broker(hub_config(tmp_path, host="0.0.0.0"), ca)
    assert "apt-get install mosquitto" in str(refused.value) or "Debian package" in str(
        refused.value
    )


def test_mosquitto_when_installed_and_embedded_on_request(ca: DeviceCA, tmp_path: Path) -> None:
    assert isinstance(managed_broker(hub_config(tmp_path), ca), ManagedMosquitto)
    embedded = managed_broker(hub_config(tmp_path, mode="embedded"), ca)
    assert isinstance(embedded, EmbeddedBroker)
    assert os.fspath(embedded.data_dir) == os.fspath(tmp_path / "broker")
