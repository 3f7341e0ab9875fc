"""The MQTT link against a real private Mosquitto: nothing lost offline, across broker
restarts and a killed agent; desired state verified before anything acts on it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import MQTTMessage

from edge_agent.protocol import (
    DesiredState,
    DeviceTopic,
    Envelope,
    MessageKind,
    ReportedState,
    decode,
    device_topic,
    key_id,
    sign_desired,
)
from edge_agent.protocol.messages import MAX_MESSAGE_BYTES, InstallEvent, UpdateEvent
from edge_agent.sync import Outbox, PayloadTooLarge
from edge_agent.sync.link import Backoff, BrokerAddress, Link, enqueue
from edge_agent.sync.state import load_status
from tests.mqtt_broker import MosquittoBroker, TestClient

DEVICE = "dev-1"
REPORTED = device_topic(DEVICE, DeviceTopic.REPORTED)
DESIRED = device_topic(DEVICE, DeviceTopic.DESIRED)
SAVE_ON_EVERY_CHANGE = ("autosave_interval 1", "autosave_on_changes true")
REPO = Path(__file__).resolve().parents[2]


class Hub:
    """The hub's side as ingest sees it: a persistent session, de-duplicating by message id."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = TestClient(broker, "_hub", clean_start=False, session_expiry_s=3600)
        self.seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.client.client.on_message = self._on_message

    def _on_message(self, _c: object, _u: object, message: MQTTMessage) -> None:
        envelope = decode(message.topic, bytes(message.payload))
        with self._lock:
            self.seen[envelope.message_id] += 1

    def start(self) -> Hub:
        self.client.connect()
        self.client.subscribe(f"edge/v1/devices/+/{DeviceTopic.REPORTED}")
        self.client.subscribe(f"edge/v1/devices/+/{DeviceTopic.EVENTS}")
        return self

    def unique(self) -> set[str]:
        with self._lock:
            return set(self.seen)

    def wait_for(self, ids: set[str], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ids <= self.unique():
                return
            time.sleep(0.05)
        missing = ids - self.unique()
        raise AssertionError(f"{len(missing)} of {len(ids)} messages never arrived")


@pytest.fixture
def hub(mqtt_broker: MosquittoBroker) -> Iterator[Hub]:
    h = Hub(mqtt_broker).start()
    yield h
    h.client.disconnect()


def report(n: int, *, sent_at: datetime | None = None) -> Envelope:
    return Envelope.of(ReportedState(agent_version=f"1.0.{n}"), device_id=DEVICE, sent_at=sent_at)


def make_link(outbox: Outbox, broker: MosquittoBroker, state_dir: Path, **kwargs: object) -> Link:
    return Link(
        outbox,
        device_id=DEVICE,
        broker=BrokerAddress(broker.host, broker.port, tls=False),
        state_dir=state_dir,
        reconnect_min_s=0.5,
        reconnect_max_s=2.0,
        **kwargs,  # type: ignore[arg-type]
    )


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_a_week_offline_arrives_exactly_once(
    mqtt_broker: MosquittoBroker, hub: Hub, tmp_path: Path
) -> None:
    mqtt_broker.stop()  # the hub's session is saved with it
    week_start = datetime(2026, 1, 5, tzinfo=UTC)
    step = timedelta(days=7) / 600
    fake_now = [week_start.timestamp()]
    outbox = Outbox(tmp_path / "outbox.db", clock=lambda: fake_now[0])
    ids = set()
    with make_link(outbox, mqtt_broker, tmp_path / "sync") as link:
        for n in range(600):  # one report every ~17 minutes for a week
            sent_at = week_start + n * step
            fake_now[0] = sent_at.timestamp()
            envelope = report(n, sent_at=sent_at)
            link.send(envelope)
            ids.add(envelope.message_id)
        assert outbox.stats().oldest_created_at == week_start
        time.sleep(0.3)
        assert not link.connected and outbox.depth() == 600
        status = load_status(tmp_path / "sync" / "status.json")
        assert status is not None and not status.connected

        mqtt_broker.start()
        hub.wait_for(ids)
        wait_until(lambda: outbox.depth() == 0)
        time.sleep(0.3)  # anything extra would show up now
    assert set(hub.seen) == ids
    assert max(hub.seen.values()) == 1  # exactly once
    status = load_status(tmp_path / "sync" / "status.json")
    assert status is not None
    assert status.outbox_depth == 0 and status.last_sync_at is not None


@pytest.mark.parametrize(
    ("mqtt_broker", "hard"),
    [((), False), (SAVE_ON_EVERY_CHANGE, True)],
    indirect=["mqtt_broker"],
    ids=["restart", "kill-9"],
)
def test_broker_restarted_mid_stream(
    mqtt_broker: MosquittoBroker, hub: Hub, tmp_path: Path, hard: bool
) -> None:
    """A restarted broker (SIGTERM: it saves its state) loses nothing. A killed one loses
    what it acknowledged but had not saved yet (Mosquitto sends PUBACK before it saves:
    see tests/sync/test_broker.py), which no client can recover; the link's own promise is
    that everything it did not see acknowledged goes again, and the queue drains."""
    outbox = Outbox(tmp_path / "outbox.db")
    ids: list[str] = []
    with make_link(outbox, mqtt_broker, tmp_path / "sync", max_in_flight=100) as link:
        wait_until(lambda: link.connected)
        for n in range(1500):
            envelope = report(n)
            link.send(envelope)
            ids.append(envelope.message_id)
            if n == 700:
                mqtt_broker.restart(hard=hard)
                after_restart = len(ids)
        if hard:
            hub.wait_for(set(ids[after_restart:]), timeout_s=30)
        else:
            hub.wait_for(set(ids), timeout_s=30)
        wait_until(lambda: outbox.depth() == 0)
        time.sleep(0.2)
    if hard:
        assert set(ids[after_restart:]) <= hub.unique()
    else:
        assert set(hub.seen) == set(ids)  # duplicates are allowed on the wire, not loss


def test_link_killed_mid_flush_loses_nothing(
    mqtt_broker: MosquittoBroker, hub: Hub, tmp_path: Path
) -> None:
    outbox_path, state_dir = tmp_path / "outbox.db", tmp_path / "sync"
    ids: set[str] = set()
    with Outbox(outbox_path) as outbox:
        for n in range(3000):
            envelope = report(n)
            enqueue(outbox, envelope)
            ids.add(envelope.message_id)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.sync.link_process",
                str(outbox_path),
                str(state_dir),
                str(mqtt_broker.port),
                DEVICE,
            ],
            cwd=REPO,
        )

    first = start()
    try:
        wait_until(lambda: len(hub.unique()) >= 300)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    assert len(hub.unique()) < len(ids)  # killed mid-flush
    second = start()
    try:
        hub.wait_for(ids, timeout_s=30)
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait()
    assert set(hub.seen) == ids


# --- desired state ---------------------------------------------------------------------


class Director:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.trusted = {key_id(self.key.public_key()): self.key.public_key()}

    def state(
        self, sequence: int, *, device_id: str = DEVICE, expired: bool = False
    ) -> DesiredState:
        now = datetime.now(UTC)
        issued = now - timedelta(hours=2) if expired else now
        return DesiredState(
            device_id=device_id,
            sequence=sequence,
            issued_at=issued,
            expires=issued + timedelta(hours=1),
        )

    def message(
        self,
        state: DesiredState,
        key: Ed25519PrivateKey | None = None,
        tamper: bool = False,
    ) -> bytes:
        signed = sign_desired(state, key or self.key)
        if tamper:
            signed = signed.model_copy(
                update={"signed": {**signed.signed, "sequence": state.sequence + 100}}
            )
        envelope = Envelope.of(signed, device_id=DEVICE)
        assert envelope.kind is MessageKind.DESIRED
        return envelope.model_dump_json().encode()


def publish_desired(hub: Hub, payload: bytes, *, retain: bool = True) -> None:
    info = hub.client.client.publish(DESIRED, payload, qos=1, retain=retain)
    info.wait_for_publish(5)


def test_desired_state_verified_and_delivered_once(
    mqtt_broker: MosquittoBroker, hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_agent.sync.link")
    director = Director()
    got: list[DesiredState] = []
    outbox = Outbox(tmp_path / "outbox.db")
    link = make_link(
        outbox,
        mqtt_broker,
        tmp_path / "sync",
        trusted_keys=director.trusted,
        on_desired=got.append,
    )
    publish_desired(hub, director.message(director.state(5)))  # retained, before it connects
    with link:
        wait_until(lambda: len(got) == 1)
        assert got[0].sequence == 5
        wait_until(lambda: link.sequences.load() == 5)

        refused = {
            "untrusted key": director.message(director.state(6), key=Ed25519PrivateKey.generate()),
            "forged": director.message(director.state(7), tamper=True),
            "other device": director.message(director.state(8, device_id="dev-2")),
            "expired": director.message(director.state(9, expired=True)),
            "replayed": director.message(director.state(4)),
            "not json": b"{nope",
        }
        for payload in refused.values():
            publish_desired(hub, payload, retain=False)
        wait_until(lambda: caplog.text.count("desired state refused") >= len(refused))
        assert "not trusted" in caplog.text
        assert "does not verify" in caplog.text
        assert "is for device dev-2" in caplog.text
        assert "expired at" in caplog.text
        assert "not newer than the last accepted (5)" in caplog.text
        assert "not JSON" in caplog.text

        mqtt_broker.restart()  # the retained state comes again after the reconnect
        wait_until(lambda: "seen again (retained)" in caplog.text)
    assert [s.sequence for s in got] == [5]

    # A new link process (restart) remembers the sequence: the retained one is a no-op.
    again: list[DesiredState] = []
    caplog.clear()
    with make_link(
        outbox,
        mqtt_broker,
        tmp_path / "sync",
        trusted_keys=director.trusted,
        on_desired=again.append,
    ):
        wait_until(lambda: "seen again (retained)" in caplog.text)
        publish_desired(hub, director.message(director.state(6)))
        wait_until(lambda: len(again) == 1)
    assert again[0].sequence == 6


def test_oversized_message_never_reaches_the_wire(
    mqtt_broker: MosquittoBroker, hub: Hub, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    with make_link(outbox, mqtt_broker, tmp_path / "sync") as link:
        wait_until(lambda: link.connected)
        with pytest.raises(PayloadTooLarge):
            outbox.put(REPORTED, b"x" * (MAX_MESSAGE_BYTES + 1), "state", "too-big")  # type: ignore[arg-type]
        envelope = report(1)
        link.send(envelope)
        hub.wait_for({envelope.message_id})
        assert link.connected and outbox.depth() == 0
    log = mqtt_broker.log()
    assert log.count("New client connected from 127.0.0.1") <= 2  # hub + link: no reconnect loop


DENY_EVENTS = ("acl_file {acl}",)


def test_a_denied_publish_is_dropped_and_counted(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite {REPORTED}\ntopic read edge/v1/#\n")
    with MosquittoBroker(tmp_path / "broker", extra_config=[f"acl_file {acl}"]) as broker:
        hub = Hub(broker).start()
        try:
            outbox = Outbox(tmp_path / "outbox.db")
            with make_link(outbox, broker, tmp_path / "sync") as link:
                wait_until(lambda: link.connected)
                denied = Envelope.of(
                    InstallEvent(model="m", version="1.0.0", event=UpdateEvent.START),
                    device_id=DEVICE,
                )
                link.send(denied)
                allowed = report(1)
                link.send(allowed)
                hub.wait_for({allowed.message_id})
                wait_until(lambda: outbox.depth() == 0)
                wait_until(lambda: link.status().denied_messages == 1)
            assert denied.message_id not in hub.unique()
        finally:
            hub.client.disconnect()


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, rand=lambda low, high: high)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0
    jittered = Backoff(1.0, 8.0)
    assert all(1.0 <= jittered.next_delay() <= 8.0 for _ in range(50))


def test_broker_address() -> None:
    assert BrokerAddress.parse("mqtts://hub.example") == BrokerAddress("hub.example", 8883, True)
    assert BrokerAddress.parse("mqtt://10.0.0.1:1884") == BrokerAddress("10.0.0.1", 1884, False)
    with pytest.raises(ValueError, match="mqtt://host"):
        BrokerAddress.parse("http://hub")


def test_a_message_nobody_subscribed_to_is_kept_and_sent_again(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """PUBACK 16 (no matching subscribers) is not delivery: the row stays in the outbox."""
    outbox = Outbox(tmp_path / "outbox.db")
    with make_link(outbox, mqtt_broker, tmp_path / "sync") as link:
        wait_until(lambda: link.connected)
        envelope = report(1)
        enqueue(outbox, envelope)
        link.flush()
        time.sleep(0.5)
        assert outbox.depth() == 1  # the broker took it, but nobody heard it
        late = Hub(mqtt_broker).start()  # the hub's ingest comes back
        try:
            late.wait_for({envelope.message_id})
            wait_until(lambda: outbox.depth() == 0)
        finally:
            late.client.disconnect()
