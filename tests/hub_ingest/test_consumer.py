"""A real broker -> the ingest consumer -> the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from edge_agent.protocol.messages import MAX_MESSAGE_BYTES, Envelope, encode, topic_for
from edge_agent.protocol.topics import HUB_INGEST_FILTERS
from hub.fleet import registry
from hub.fleet.models import InstallEventRecord, ReceivedMessage
from hub.ingest.consumer import IngestConsumer, IngestSettings
from tests.hub_ingest.helpers import count, distinct_events, event, report, wait_count, wire
from tests.mqtt_broker import MosquittoBroker, TestClient


@contextmanager
def consumer(
    engine: Engine, broker: MosquittoBroker, client_id: str = "hub-1", **options: object
) -> Iterator[IngestConsumer]:
    worker = IngestConsumer(
        engine,
        IngestSettings(host=broker.host, port=broker.port, client_id=client_id, **options),  # type: ignore[arg-type]
    )
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@contextmanager
def device(broker: MosquittoBroker, name: str = "publisher") -> Iterator[TestClient]:
    with TestClient(broker, name) as client:
        yield client


def publish(client: TestClient, envelopes: list[Envelope]) -> None:
    for envelope in envelopes:
        client.publish(*wire(envelope))


def test_reported_state_and_events_reach_the_database(
    engine: Engine, mqtt_broker: MosquittoBroker
) -> None:
    messages = [report("dev-1", "1.2.0", seconds=5), event("dev-1", 6), event("dev-2", 7)]
    with consumer(engine, mqtt_broker) as worker, device(mqtt_broker) as client:
        publish(client, messages)
        assert wait_count(engine, 3) == 3
        assert worker.wait_idle()
    assert worker.stats.stored == 3 and not worker.stats.refused
    details = registry.show_device(engine, "dev-1")
    assert details.models[0].active == "1.2.0"
    assert [e.message_id for e in details.recent_events] == [messages[1].message_id]
    assert {d.id for d in registry.list_devices(engine)} == {"dev-1", "dev-2"}


def test_duplicates_and_overlapping_subscriptions_are_stored_once(
    engine: Engine, mqtt_broker: MosquittoBroker
) -> None:
    # Every message also matches a plain subscription: each arrives twice, and is sent twice.
    overlapping = (*HUB_INGEST_FILTERS, "edge/v1/devices/+/events")
    messages = [event("dev-1", n) for n in range(20)]
    with (
        consumer(engine, mqtt_broker, filters=overlapping) as worker,
        device(mqtt_broker) as client,
    ):
        publish(client, messages + messages)
        deadline = time.monotonic() + 10
        while worker.stats.received < 80 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.wait_idle()
    assert worker.stats.received == 80
    assert (worker.stats.stored, worker.stats.duplicates) == (20, 60)
    assert count(engine, InstallEventRecord) == 20 == distinct_events(engine)
    assert count(engine, ReceivedMessage) == 20


def test_a_burst_of_1000_is_stored_exactly_once(
    engine: Engine, mqtt_broker: MosquittoBroker
) -> None:
    messages = [event(f"dev-{n % 10}", n) for n in range(1000)]
    payloads = [wire(e) for e in messages]
    with consumer(engine, mqtt_broker) as worker, device(mqtt_broker) as client:
        # Publish without waiting for each PUBACK: a real burst.
        infos = [client.client.publish(topic, data, qos=1) for topic, data in payloads]
        for info in infos:
            info.wait_for_publish(10)
        assert wait_count(engine, 1000) == 1000
        assert worker.wait_idle()
    assert count(engine, InstallEventRecord) == 1000 == distinct_events(engine)
    assert worker.stats.batches < 1000  # batched, not one transaction per message


def test_a_writer_process_stores_refuses_and_survives_its_own_death(
    engine: Engine, mqtt_broker: MosquittoBroker
) -> None:
    # writer="process": decoding and storing in a child, acknowledgements here.
    first = [event(f"dev-{n % 10}", n) for n in range(500)]
    second = [event(f"dev-{n % 10}", n) for n in range(500, 1000)]
    with (
        consumer(engine, mqtt_broker, writer="process", writer_processes=2) as worker,
        device(mqtt_broker) as client,
    ):
        client.publish(topic_for(first[0]), b"not json")
        publish(client, first)
        assert wait_count(engine, 500) == 500
        assert worker.wait_idle()
        children = [writer._process for writer in worker._process_writers]
        assert len(children) == 2
        for child in children:  # the next batches find them gone, start others
            assert child is not None and child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
        publish(client, second)
        assert wait_count(engine, 1000) == 1000
        assert worker.wait_idle()
    assert count(engine, InstallEventRecord) == 1000 == distinct_events(engine)
    assert worker.stats.refused == {"MalformedMessage": 1}
    assert worker.stats.stored == 1000


def test_refused_messages_are_logged_and_ingest_goes_on(
    engine: Engine, mqtt_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    good = event("dev-1", 1)
    topic = topic_for(good)
    raw = json.loads(encode(good))
    newer = {**raw, "schema_version": 99}
    wrong_device = event("dev-2", 2)
    bad = [
        (topic, b"not json"),
        (topic, b"{" * 10 + b"x" * (MAX_MESSAGE_BYTES + 1)),
        (topic, json.dumps(newer).encode()),
        (topic, encode(wrong_device)),  # dev-2's message on dev-1's topic
        (topic, json.dumps({**raw, "message_id": "nope"}).encode()),
    ]
    caplog.set_level(logging.WARNING, logger="hub.ingest.consumer")
    with consumer(engine, mqtt_broker) as worker, device(mqtt_broker) as client:
        for item in bad:
            client.publish(*item)
        client.publish(*wire(good))
        assert wait_count(engine, 1) == 1
        assert worker.wait_idle()
    assert dict(worker.stats.refused) == {
        "MalformedMessage": 2,
        "OversizedMessage": 1,
        "UnsupportedVersion": 1,
        "WrongTopic": 1,
    }
    reasons = "\n".join(r.getMessage() for r in caplog.records)
    for expected in ("is not JSON", "over the limit", "schema version 99", "speak only for"):
        assert expected in reasons
    assert count(engine, ReceivedMessage) == 1


def test_two_consumers_split_the_load(engine: Engine, mqtt_broker: MosquittoBroker) -> None:
    messages = [event(f"dev-{n % 7}", n) for n in range(400)]
    with (
        consumer(engine, mqtt_broker, "hub-a") as first,
        consumer(engine, mqtt_broker, "hub-b") as second,
        device(mqtt_broker) as client,
    ):
        publish(client, messages)
        assert wait_count(engine, 400) == 400
        assert first.wait_idle() and second.wait_idle()
    assert first.stats.stored > 0 and second.stats.stored > 0
    assert first.stats.stored + second.stats.stored == 400
    assert first.stats.duplicates == second.stats.duplicates == 0
    assert count(engine, InstallEventRecord) == 400 == distinct_events(engine)


def _start_worker(database_url: str, broker: MosquittoBroker, log: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "hub.ingest", "--database-url", database_url,
        "--host", broker.host, "--port", str(broker.port), "--client-id", "hub-killed",
        "--no-migrate",
    ]  # fmt: skip
    with log.open("a") as stderr:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip() == "ingest: ready", log.read_text()
    return process


def test_killed_mid_stream_loses_nothing_and_stores_nothing_twice(
    engine: Engine, database_url: str, mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    total = 1500
    messages = [event(f"dev-{n % 5}", n) for n in range(total)]
    log = tmp_path / "ingest.log"
    worker = _start_worker(database_url, mqtt_broker, log)
    published = threading.Event()

    def send() -> None:
        with device(mqtt_broker) as client:
            infos = [client.client.publish(*wire(e), qos=1) for e in messages]
            for info in infos:
                info.wait_for_publish(20)
        published.set()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        # SIGKILL while the stream is flowing: some batches committed, some not acknowledged.
        while count(engine) < 200:
            assert worker.poll() is None, log.read_text()
            time.sleep(0.005)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert worker.stdout is not None
        worker.stdout.close()
        stored_at_kill = count(engine)
        assert stored_at_kill < total
        sender.join(30)
        assert published.is_set()
        worker = _start_worker(database_url, mqtt_broker, log)
        assert wait_count(engine, total, timeout_s=30) == total, log.read_text()
        time.sleep(0.3)  # any late redelivery would show up now
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)
        assert worker.stdout is not None
        worker.stdout.close()
        sender.join(30)
    assert count(engine, ReceivedMessage) == total
    assert count(engine, InstallEventRecord) == total == distinct_events(engine)


class _CrashBeforeAck(IngestConsumer):
    """Commits, then dies before acknowledging: the worst moment for a crash."""

    def _ack(self, batch: list[Any]) -> None:
        pass

    def crash(self) -> None:
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()  # no DISCONNECT: the broker keeps the session and what is in flight


def test_committed_but_unacknowledged_messages_come_back_and_count_once(
    engine: Engine, mqtt_broker: MosquittoBroker
) -> None:
    messages = [event("dev-1", n) for n in range(30)]
    settings = IngestSettings(host=mqtt_broker.host, port=mqtt_broker.port, client_id="hub-c")
    crashing = _CrashBeforeAck(engine, settings)
    crashing.start()
    with device(mqtt_broker) as client:
        publish(client, messages)
        assert wait_count(engine, 30) == 30
        assert crashing.wait_idle()
    crashing.crash()
    crashing._stopping.set()
    with consumer(engine, mqtt_broker, "hub-c") as restarted:
        deadline = time.monotonic() + 10
        while restarted.stats.received < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert restarted.wait_idle()
    assert (restarted.stats.received, restarted.stats.duplicates) == (30, 30)
    assert restarted.stats.stored == 0
    assert count(engine, InstallEventRecord) == 30 == distinct_events(engine)


def test_a_broker_restart_mid_stream_loses_nothing(
    engine: Engine, mqtt_broker: MosquittoBroker
) -> None:
    before = [event("dev-1", n) for n in range(50)]
    after = [event("dev-1", 100 + n) for n in range(50)]
    with consumer(engine, mqtt_broker) as worker:
        with device(mqtt_broker) as client:
            publish(client, before)
        connections = worker.connections
        mqtt_broker.restart()  # the consumer reconnects to its persisted session by itself
        deadline = time.monotonic() + 10
        while worker.connections == connections and time.monotonic() < deadline:
            time.sleep(0.01)
        # Mosquitto 2.0 does not restore shared subscriptions from its persistence: until a
        # worker has subscribed again, a publish gets "no matching subscribers" (PUBACK 16).
        assert worker.wait_subscribed()
        with device(mqtt_broker, "publisher-2") as client:
            publish(client, after)
        assert wait_count(engine, 100) == 100
        assert worker.wait_idle()
    assert count(engine, InstallEventRecord) == 100 == distinct_events(engine)
