"""The one way this project makes a paho-mqtt client: MQTT 5, the version-2 callbacks,
TLS from files, and a persistent session (clean_start off, a session expiry).

Used by the agent's link, the hub's ingest workers and the hub's desired-state publisher,
so every client of the fleet speaks to the broker with the same settings.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """mqtt://host[:1883] or mqtts://host[:8883]."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(
                f"broker url {url!r} must be mqtt://host[:port] or mqtts://host[:port]"
            )
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, parts.port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    """The CA to trust and the client's own certificate and key (PEM files)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def given(self) -> bool:
        return bool(self.ca_file or self.cert_file)


def new_client(
    client_id: str,
    *,
    tls: TlsFiles | None = None,
    use_tls: bool = False,
    manual_ack: bool = False,
) -> Client:
    """An MQTT 5 client; TLS (certificate checked against `tls.ca_file`, or the system's
    CAs) when `use_tls` or when files are given."""
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
    )
    if use_tls or (tls is not None and tls.given):
        files = tls or TlsFiles()
        client.tls_set(
            ca_certs=str(files.ca_file) if files.ca_file else None,
            certfile=str(files.cert_file) if files.cert_file else None,
            keyfile=str(files.key_file) if files.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


def connect_persistent(
    client: Client,
    broker: BrokerAddress,
    *,
    keepalive_s: int,
    session_expiry_s: int,
    receive_maximum: int | None = None,
) -> None:
    """Start connecting in paho's background loop with a session the broker keeps for
    `session_expiry_s` while we are away (subscriptions and queued QoS 1 messages)."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum
    client.connect_async(
        broker.host, broker.port, keepalive=keepalive_s, clean_start=False, properties=properties
    )
    client.loop_start()
