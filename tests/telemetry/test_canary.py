"""The canary: prompts carrying unique strings go through a real agent in a fleet, and every
byte the agent sends is captured: its whole TCP traffic to the broker and to the hub, both
directions, recorded by loopback proxies in between, plus the broker's own log (CONNECT
fields, subscriptions) and the messages the broker delivers. No canary, no 8-character
piece of one and no hash of one may appear in any of it; no piece of a model's answer may
appear in what the agent sends; and every delivered message must validate against the
protocol (telemetry against its closed schema). The hub's artifact server, with its
telemetry token route, gives the agent its anonymous token. The links are in clear here
(mqtt://, http://), so the recorded bytes are the plaintext; the test checks that they are.
"""

from __future__ import annotations

import hashlib
import queue
import uuid
from pathlib import Path

import openai
import pytest
from paho.mqtt.client import MQTTMessage
from sqlalchemy import create_engine

from edge_agent.protocol import TELEMETRY_TOPIC, MessageKind, TelemetryReport, decode
from hub.artifacts.server import create_app
from hub.artifacts.tokens import TokenStore
from hub.telemetry.issuance import TokenIssuer, token_route
from hub.telemetry.keys import PeriodKeys
from hub.telemetry.models import TOKEN_ISSUANCE
from tests.conftest import ServerThread
from tests.fleet.processes import wait_for
from tests.fleet.test_hub_and_agent import Device
from tests.mqtt_broker import MosquittoBroker, TestClient
from tests.ports import free_port
from tests.tcp_recorder import TcpRecorder
from tests.updates.conftest import Fleet, fleet

__all__ = ["fleet"]

DEVICE_ID = "dev-canary"
PIECE = 8


class FleetDevice(Device):
    broker_port: int = 0
    hub_url: str = ""
    download_token: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {
            **super().env,
            "EDGE_AGENT__SYNC__BROKER_URL": f"mqtt://127.0.0.1:{self.broker_port}",
            "EDGE_AGENT__SYNC__DEVICE_ID": DEVICE_ID,
            "EDGE_AGENT__UPDATES__SOURCE": self.hub_url,
            "EDGE_AGENT__UPDATES__TOKEN": self.download_token,
        }


def hub_server(fleet: Fleet, folder: Path) -> tuple[ServerThread, str]:
    """The hub's HTTP server (releases and telemetry tokens) and the device's token."""
    folder.mkdir()
    engine = create_engine(f"sqlite:///{folder / 'hub.sqlite3'}")
    TOKEN_ISSUANCE.create(engine)
    downloads = TokenStore(folder / "download-tokens.json")
    issuer = TokenIssuer(engine, PeriodKeys(b"s" * 32))
    app = create_app(fleet.repo.root, downloads, [token_route(issuer, downloads)])
    return ServerThread(app), downloads.issue(DEVICE_ID)


def forbidden(secret: str) -> set[str]:
    """Every piece of `secret` at least PIECE characters long, and its usual hashes."""
    pieces = {secret[i : i + PIECE] for i in range(len(secret) - PIECE + 1)}
    digests = {hashlib.new(name, secret.encode()).hexdigest() for name in ("md5", "sha1", "sha256")}
    return pieces | digests | {d[:16] for d in digests}


def drain(capture: TestClient) -> list[MQTTMessage]:
    messages = []
    while True:
        try:
            messages.append(capture.messages.get_nowait())
        except queue.Empty:
            return messages


def test_no_prompt_or_answer_leaves_the_device(fleet: Fleet, tmp_path: Path) -> None:
    fleet.update()  # an installed release: telemetry is kept per release
    broker = MosquittoBroker(tmp_path / "broker")
    canaries = [f"CANARY{uuid.uuid4().hex.upper()}" for _ in range(6)]
    answers: list[str] = []
    hub, download_token = hub_server(fleet, tmp_path / "hub")
    with (
        broker,
        hub,
        TestClient(broker, "capture") as capture,
        TcpRecorder(broker.port) as to_broker,
        TcpRecorder(hub.port) as to_hub,
    ):
        capture.subscribe("#")
        device = FleetDevice(fleet.device, free_port())
        device.broker_port = to_broker.port
        device.hub_url = f"http://127.0.0.1:{to_hub.port}"
        device.download_token = download_token
        try:
            device.serve("tiny")
            with openai.OpenAI(  # closed: its connections must not outlive the test
                base_url=f"http://127.0.0.1:{device.api_port}/v1", api_key="unused"
            ) as client:
                for number, canary in enumerate(canaries):
                    prompt = f"Summarise the file of patient {canary}, please."
                    if number % 2:
                        chat = client.chat.completions.create(
                            model="tiny",
                            messages=[{"role": "user", "content": prompt}],
                            max_tokens=12,
                            user=canary,
                        )
                        answers.append(chat.choices[0].message.content or "")
                    else:
                        stream = client.completions.create(
                            model="tiny", prompt=prompt, max_tokens=12, stream=True
                        )
                        answers.append("".join(c.choices[0].text for c in stream if c.choices))
                with pytest.raises(openai.NotFoundError):  # an error path that echoes the name
                    client.completions.create(model=canaries[0], prompt="x", max_tokens=2)
        finally:
            device.stop()  # a clean stop queues the open telemetry window
        device.serve("tiny")  # ...and the link sends it once connected again
        try:
            wait_for(
                lambda: any(m.topic == TELEMETRY_TOPIC for m in list(capture.messages.queue)),
                f"telemetry at the broker\n{device.log()}",
                60,
            )

            def shown_sent() -> str | None:  # the outbox row goes once the PUBACK is in
                text = device.cli("telemetry", "show").stdout
                return text if f"  sent  {TELEMETRY_TOPIC}" in text else None

            shown = str(wait_for(shown_sent, "telemetry show marking it sent", 30))
        finally:
            device.stop()
        captured = drain(capture)
    broker_log = broker.log().encode()

    secrets = [*canaries, *(a for a in answers if len(a.strip()) >= PIECE)]
    # The recordings hold real traffic, in clear: the MQTT CONNECT's protocol name and the
    # telemetry topic; HTTP requests to the hub (the telemetry token, update metadata).
    assert b"\x00\x04MQTT\x05" in to_broker.sent, "the MQTT link is not in clear any more"
    assert TELEMETRY_TOPIC.encode() in to_broker.sent
    assert b" HTTP/1.1\r\n" in to_hub.sent and to_hub.connections >= 1
    assert b"New client connected" in broker_log
    sent = {"to the broker": to_broker.sent, "to the hub": to_hub.sent}
    for where, data in sent.items():
        for secret in secrets:
            for piece in forbidden(secret):
                assert piece.encode() not in data, f"{piece!r} sent {where}"
    # What came back, and what the broker logged, could only hold a canary the agent sent.
    # (Answers are left out here: the hub serves the model's own files, whose vocabulary
    # the answers are made of.)
    elsewhere = {
        "from the broker": to_broker.received,
        "from the hub": to_hub.received,
        "in the broker's log": broker_log,
    }
    for where, data in elsewhere.items():
        for canary in canaries:
            for piece in forbidden(canary):
                assert piece.encode() not in data, f"{piece!r} {where}"

    assert captured
    kinds = set()
    for message in captured:
        wire = message.topic.encode() + message.payload
        for secret in secrets:
            for piece in forbidden(secret):
                assert piece.encode() not in wire, f"{piece!r} leaked on {message.topic}"
        envelope = decode(message.topic, bytes(message.payload))  # the protocol accepts it
        kinds.add(envelope.kind)
        if message.topic == TELEMETRY_TOPIC:
            assert envelope.kind is MessageKind.TELEMETRY and envelope.device_id is None
            assert isinstance(envelope.payload, TelemetryReport)
            assert DEVICE_ID.encode() not in message.payload
            assert envelope.payload.token is not None  # the hub would accept it
    assert MessageKind.TELEMETRY in kinds
    reports = [
        decode(m.topic, bytes(m.payload)).payload for m in captured if m.topic == TELEMETRY_TOPIC
    ]
    served = [r for r in reports if isinstance(r, TelemetryReport) and r.model == "tiny"]
    assert sum(r.requests for r in served) >= len(canaries)  # coarsened up, never down
    assert all(c not in shown for c in canaries) and '"telemetry"' in shown


def test_status_names_the_policy(tmp_path: Path) -> None:
    device = Device(tmp_path / "device", 0)
    assert "telemetry: aggregate, but kept locally only" in device.cli("status").stdout
    device.data.parent.joinpath("agent-none.toml").write_text('[telemetry]\npolicy = "off"\n')
    assert "telemetry: off: nothing is collected" in device.cli("status").stdout
