"""Telemetry through a real broker and the ingest consumer, on SQLite and PostgreSQL:
stored once, refused with a reason when it does not fit the schema, never by device."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, String, select

from edge_agent.protocol.messages import Envelope, encode
from edge_agent.protocol.topics import TELEMETRY_TOPIC, DeviceTopic, device_topic
from hub.fleet.models import ReceivedMessage
from hub.ingest.consumer import IngestConsumer
from hub.telemetry.models import TELEMETRY
from hub.telemetry.query import release_health
from tests.hub_ingest.helpers import event, wait_count, wire
from tests.hub_ingest.test_consumer import consumer
from tests.hub_telemetry.helpers import busy, report, stored
from tests.mqtt_broker import MosquittoBroker, TestClient

DEVICES = [f"site-{n}" for n in range(6)]


def publish(broker: MosquittoBroker, client_id: str, messages: list[tuple[str, bytes]]) -> None:
    with TestClient(broker, client_id) as client:
        for topic, data in messages:
            client.publish(topic, data)


def wait_received(worker: IngestConsumer, expected: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while worker.stats.received < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.wait_idle()


def test_offline_reports_arrive_once_however_often_they_are_sent(
    engine: Engine, mqtt_broker: MosquittoBroker, token_seed_file: Path
) -> None:
    # Each device was offline for a day: 24 hourly reports wait in its outbox, and travel
    # as soon as it connects; an outbox that lost its PUBACKs sends them all again.
    outboxes = {name: [busy(n, hour=h) for h in range(24)] for n, name in enumerate(DEVICES)}
    with consumer(engine, mqtt_broker, token_seed_file=token_seed_file) as worker:
        for name, outbox in outboxes.items():
            publish(mqtt_broker, name, [wire(e) for e in outbox])
        assert wait_count(engine, 6 * 24, counter=stored) == 6 * 24
        for name, outbox in outboxes.items():
            publish(mqtt_broker, name, [wire(e) for e in outbox[::-1]])
        wait_received(worker, 2 * 6 * 24)
    assert (worker.stats.stored, worker.stats.duplicates) == (144, 144)
    assert stored(engine) == 144
    cells = release_health(engine, "chat", bucket="day")
    assert len(cells) == 1 and cells[0].metrics is not None
    assert (cells[0].metrics.devices, cells[0].metrics.requests) == (6, 6 * 24 * 100)
    _no_device_id_stored(engine)


def _no_device_id_stored(engine: Engine) -> None:
    """No device id, nor the MQTT client id the devices published with, anywhere in the
    telemetry rows; and no received_messages row (with its arrival time) for them."""
    text_columns = [c for c in TELEMETRY.c if isinstance(c.type, String)]
    with engine.connect() as connection:
        values = {v for row in connection.execute(select(*text_columns)) for v in row}
        kinds = connection.execute(
            select(ReceivedMessage.kind, ReceivedMessage.device_id).distinct()  # type: ignore[call-overload]
        ).all()
    assert not {v for v in values if v is not None and any(d in v for d in DEVICES)}
    assert kinds == []


def test_refused_telemetry_is_logged_and_ingest_goes_on(
    engine: Engine,
    mqtt_broker: MosquittoBroker,
    token_seed_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = busy(1)
    raw = json.loads(encode(good))
    payload = raw["payload"]

    def variant(**changes: object) -> bytes:
        return json.dumps({**raw, "payload": {**payload, **changes}}).encode()

    named = {**raw, "device_id": "site-1"}
    bad = [
        (TELEMETRY_TOPIC, variant(user_prompt="tell me a secret")),  # closed schema
        (TELEMETRY_TOPIC, variant(requests="100")),  # counts are JSON integers
        (TELEMETRY_TOPIC, variant(ttft_histogram=[1, 2, 3])),  # fixed cell count
        (TELEMETRY_TOPIC, variant(errors={"a stack trace": 1})),  # enum keys only
        (TELEMETRY_TOPIC, json.dumps(named).encode()),  # names its device
        (TELEMETRY_TOPIC, json.dumps({**raw, "hostname": "ws-17"}).encode()),  # envelope extra
        (TELEMETRY_TOPIC, b"{not json"),
        (device_topic("site-1", DeviceTopic.REPORTED), encode(good)),  # on a device's topic
    ]
    caplog.set_level(logging.WARNING, logger="hub.ingest.consumer")
    with consumer(engine, mqtt_broker, token_seed_file=token_seed_file) as worker:
        publish(mqtt_broker, "site-1", [*bad, wire(good), wire(event("site-1"))])
        assert wait_count(engine, 1, counter=stored) == 1
        assert wait_count(engine, 1) == 1  # the install event
        wait_received(worker, len(bad) + 2)
    assert sum(worker.stats.refused.values()) == len(bad)
    assert dict(worker.stats.refused) == {"MalformedMessage": 7, "WrongTopic": 1}
    reasons = "\n".join(r.getMessage() for r in caplog.records)
    expected_reasons = ("user_prompt", "requests", "ttft_histogram", "errors", "must not name")
    for expected in (*expected_reasons, "hostname"):
        assert expected in reasons
    assert stored(engine) == 1
    rows = release_health(engine, "chat", k=2)
    assert rows[0].suppressed  # one device: stored, never shown


def test_an_agent_report_is_stored(
    engine: Engine, mqtt_broker: MosquittoBroker, token_seed_file: Path
) -> None:
    agent: Envelope = report(3, model=None, version=None, crashes=2, restarts=2)
    with consumer(engine, mqtt_broker, token_seed_file=token_seed_file) as worker:
        publish(mqtt_broker, "site-3", [wire(agent)])
        assert wait_count(engine, 1, counter=stored) == 1
        assert worker.wait_idle()
    with engine.connect() as connection:
        row = connection.execute(select(TELEMETRY.c.model, TELEMETRY.c.crashes)).one()
    assert tuple(row) == (None, 2)


def test_reports_sent_while_the_hub_is_away_arrive_when_it_is_back(
    engine: Engine, mqtt_broker: MosquittoBroker, token_seed_file: Path
) -> None:
    with consumer(engine, mqtt_broker, "hub-away", token_seed_file=token_seed_file):
        pass  # the session (and its subscriptions) outlive the worker
    messages = [busy(n, hour=h) for n in range(5) for h in range(3)]
    publish(mqtt_broker, "site-0", [wire(e) for e in messages])
    with consumer(engine, mqtt_broker, "hub-away", token_seed_file=token_seed_file) as worker:
        assert wait_count(engine, 15, counter=stored) == 15
        wait_received(worker, 15)
    assert worker.stats.duplicates == 0
    assert [c.metrics and c.metrics.devices for c in release_health(engine, "chat")] == [5] * 3
