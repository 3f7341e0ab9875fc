"""A private Mosquitto for the tests, and a small paho MQTT 5 client to talk to it.

The broker runs as a child process on a free 127.0.0.1 port with a generated config in its
own folder (persistence on, generous queues). It runs as the user who started the tests:
Mosquitto started as root would otherwise switch to the `mosquitto` user, who cannot use a
test's private folder.
"""

from __future__ import annotations

import getpass
import queue
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.mqtt import stop_client
from hub.broker import BrokerMissing, find_mosquitto
from hub.broker.process import BrokerProcess, ProcessExited
from tests.ports import free_port

__all__ = ["BrokerMissing", "Endpoint", "MosquittoBroker", "TestClient"]

HOST = "127.0.0.1"
READY_TIMEOUT_S = 10.0
# Mosquitto's default queue limits drop messages silently, even for online subscribers in a
# burst: a test must never lose a message to the broker's bookkeeping.
MAX_QUEUED_MESSAGES = 1_000_000


class MosquittoBroker:
    """start(), stop(), restart(); the same port and persistence folder across restarts."""

    def __init__(self, workdir: Path, *, extra_config: Iterable[str] = ()) -> None:
        self.binary = find_mosquitto()
        self.workdir = workdir
        self.extra_config = list(extra_config)
        self.port = 0
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.persistence_dir = workdir / "data"
        self._process = BrokerProcess()

    @property
    def host(self) -> str:
        return HOST

    @property
    def running(self) -> bool:
        return self._process.running

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            # Ignored unless started as root; then it keeps the broker as that user.
            f"user {getpass.getuser()}",
            f"log_dest file {self.log_path}",
            "log_type all",
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        if self.running:
            raise RuntimeError("the broker is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistence_dir.mkdir(exist_ok=True)
        if self.port:
            self._launch()
            return
        # A free port can be taken by someone else before the broker binds it: try another.
        for attempt in range(3):
            self.port = free_port()
            try:
                self._launch()
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def _launch(self) -> None:
        self._write_config()
        self._process.spawn(
            [str(self.binary), "-c", str(self.config_path)], self.workdir / "mosquitto.out"
        )
        try:
            listening = self._process.wait_listening(HOST, self.port, READY_TIMEOUT_S, lambda: True)
        except ProcessExited as exited:
            raise RuntimeError(f"mosquitto {exited}: {self}") from None
        if not listening:
            raise RuntimeError(
                f"mosquitto did not accept connections in {READY_TIMEOUT_S} s: {self}"
            )

    def stop(self) -> None:
        """Stop as a service manager would: SIGTERM, and the broker saves its state."""
        self._process.stop()

    def kill(self) -> None:
        """A crash: SIGKILL, so only what the broker had already saved survives."""
        self._process.kill()

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or kill, when hard) and start again on the same port and persistence."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __str__(self) -> str:
        return f"mosquitto on {HOST}:{self.port}, log:\n{self.log()[-2000:]}"


class Endpoint(Protocol):
    """Where a TestClient connects: MosquittoBroker, or the hub's ManagedMosquitto."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class TestClient:
    """A paho MQTT 5 client on its own network thread; received messages land in a queue.
    With `ca_file` it speaks TLS, and shows a client certificate when given one."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(
        self,
        broker: Endpoint,
        client_id: str,
        *,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.messages: queue.Queue[MQTTMessage] = queue.Queue()
        self.session_present: bool | None = None
        self._connected = threading.Event()
        self._subscribed: dict[int, threading.Event] = {}
        self._connect_reason: ReasonCode | None = None
        self.client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if ca_file is not None:
            self.client.tls_set(
                ca_certs=str(ca_file),
                certfile=str(cert_file) if cert_file else None,
                keyfile=str(key_file) if key_file else None,
            )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self,
        _client: Client,
        _userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.session_present = flags.session_present
        self._connect_reason = reason_code
        self._connected.set()

    def _on_subscribe(
        self,
        _client: Client,
        _userdata: Any,
        mid: int,
        _reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        self._subscribed.setdefault(mid, threading.Event()).set()

    def _on_message(self, _client: Client, _userdata: Any, message: MQTTMessage) -> None:
        self.messages.put(message)

    def connect(self, timeout_s: float = 5.0) -> Self:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.session_expiry_s
        self.client.connect(
            self.broker.host,
            self.broker.port,
            keepalive=30,
            clean_start=self.clean_start,
            properties=properties,
        )
        self.client.loop_start()
        if not self._connected.wait(timeout_s):
            raise TimeoutError(f"{self.client_id}: no CONNACK in {timeout_s} s")
        if self._connect_reason is None or self._connect_reason.is_failure:
            raise ConnectionError(f"{self.client_id}: connection refused: {self._connect_reason}")
        return self

    def subscribe(self, topic: str, qos: int = 1, timeout_s: float = 5.0) -> None:
        rc, mid = self.client.subscribe(topic, qos=qos)
        if mid is None:
            raise ConnectionError(f"{self.client_id}: subscribe to {topic} failed: {rc}")
        if not self._subscribed.setdefault(mid, threading.Event()).wait(timeout_s):
            raise TimeoutError(f"{self.client_id}: no SUBACK for {topic} in {timeout_s} s")

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout_s: float = 5.0) -> None:
        """Publish and wait for the broker's acknowledgement (PUBACK for QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise TimeoutError(f"{self.client_id}: {topic} not acknowledged in {timeout_s} s")

    def receive(self, timeout_s: float = 5.0) -> MQTTMessage:
        return self.messages.get(timeout=timeout_s)

    def disconnect(self) -> None:
        stop_client(self.client)

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()
