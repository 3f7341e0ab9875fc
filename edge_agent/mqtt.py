"""The one way this project makes a paho-mqtt client: MQTT 5, the version-2 callbacks,
TLS from files, and a persistent session (clean_start off, a session expiry).

Used by the agent's link, the hub's ingest workers and the hub's desired-state publisher,
so every client of the fleet speaks to the broker with the same settings.
"""

from __future__ import annotations

import contextlib
import ssl

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.sync.addresses import BrokerAddress, TlsFiles

__all__ = ["BrokerAddress", "TlsFiles", "connect_persistent", "new_client", "stop_client"]


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


def stop_client(client: Client) -> None:
    """Disconnect and stop paho's network thread. loop_stop() checks the thread, then joins
    it, while the thread clears the attribute as it ends: when the disconnect ends the
    thread in between, the join fails with AttributeError (paho issue #872, open). The
    thread has then finished, which is all loop_stop() waits for."""
    client.disconnect()
    with contextlib.suppress(AttributeError):
        client.loop_stop()
