"""Puts signed desired state on the broker: a retained QoS 1 message on each device's
desired topic, so a device gets its newest state whenever it (re)connects.

A state counts as published only once the broker acknowledged it (PUBACK); until then it
stays pending in the database and the next round publishes it again. A round hands the
broker states in batches of PUBLISH_BATCH and records each batch's acknowledgements in one
transaction: waiting for each PUBACK and committing each row made a wave of 1,000 devices
take 4 s of round trips and fsyncs (bench/rollout.py). Batches overlap: the next one is on
its way while the previous one's PUBACKs are awaited and recorded, BATCHES_IN_FLIGHT at
most, and paho keeps up to IN_FLIGHT_MESSAGES unacknowledged on the wire (its default of
20 made every 20 messages wait for a round trip through a broker busy fanning out).

Every (re)connect re-publishes every current state: the broker may have restarted after a
crash and lost retained messages it had acknowledged but not saved yet (the managed
Mosquitto saves every few seconds, hub.broker.mosquitto). Devices take the same state
again as no news.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessageInfo
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import Engine

from edge_agent.mqtt import BrokerAddress, TlsFiles, connect_persistent, new_client, stop_client
from edge_agent.protocol import Envelope, SignedDesired, encode, topic_for
from hub.fleet import desired

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
PUBLISH_BATCH = 500  # states whose PUBACKs are awaited and recorded together
BATCHES_IN_FLIGHT = 2  # batches handed to paho before the oldest one's PUBACKs are awaited
IN_FLIGHT_MESSAGES = PUBLISH_BATCH * BATCHES_IN_FLIGHT  # unacknowledged on the wire, at most


class DesiredPublisher:
    """A connected hub client; `publish_pending(engine)` is the periodic job."""

    def __init__(
        self, broker: BrokerAddress, tls: TlsFiles | None, client_id: str = "_hub-director"
    ) -> None:
        self.broker = broker
        self._connected = threading.Event()
        # Set at each connect: the next round publishes every current state again.
        self._republish = threading.Event()
        self.client: Client = new_client(client_id, tls=tls, use_tls=broker.tls)
        self.client.max_inflight_messages_set(IN_FLIGHT_MESSAGES)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        connect_persistent(self.client, self.broker, keepalive_s=30, session_expiry_s=0)

    def stop(self) -> None:
        stop_client(self.client)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def _on_connect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("desired-state publisher: the broker refused us: %s", reason_code)
            return
        self._republish.set()
        self._connected.set()

    def _on_disconnect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: DisconnectFlags,
        _reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._connected.clear()

    def _send(self, signed_json: str, device_id: str) -> MQTTMessageInfo:
        envelope = Envelope.of(SignedDesired.model_validate_json(signed_json), device_id=device_id)
        return self.client.publish(topic_for(envelope), encode(envelope), qos=1, retain=True)

    @staticmethod
    def _acknowledged(info: MQTTMessageInfo, device_id: str, timeout_s: float) -> bool:
        try:
            info.wait_for_publish(max(timeout_s, 0.0))
        except (RuntimeError, ValueError) as exc:  # disconnected meanwhile, or queue full
            log.warning("desired state for %s not published: %s", device_id, exc)
            return False
        return info.is_published()

    def _settle(
        self,
        engine: Engine,
        sent: list[tuple[desired.Unpublished, MQTTMessageInfo]],
        timeout_s: float,
    ) -> tuple[int, bool]:
        """Wait for a batch's PUBACKs and record them: how many, and whether all came."""
        deadline = time.monotonic() + timeout_s  # for the batch, not each message
        acked = [
            r
            for r, info in sent
            if self._acknowledged(info, r.device_id, deadline - time.monotonic())
        ]
        desired.mark_published_many(engine, [(r.device_id, r.sequence) for r in acked])
        return len(acked), len(acked) == len(sent)

    def publish(self, signed_json: str, device_id: str) -> bool:
        """Publish one signed state, retained; True once the broker acknowledged it."""
        if not self._connected.is_set():
            return False
        return self._acknowledged(self._send(signed_json, device_id), device_id, PUBLISH_TIMEOUT_S)

    def publish_pending(self, engine: Engine) -> int:
        """Publish every unpublished state; the number the broker acknowledged."""
        done = 0
        if self._republish.is_set():
            self._republish.clear()  # before: a connect from now on asks again
            again = desired.mark_all_unpublished(engine)
            if again:
                log.info("connected to the broker: publishing %d current states again", again)
        records = desired.unpublished(engine)
        in_flight: deque[list[tuple[desired.Unpublished, MQTTMessageInfo]]] = deque()
        complete = True
        for start in range(0, len(records), PUBLISH_BATCH):
            if not complete or not self._connected.is_set():
                break  # the next round tries again
            batch = records[start : start + PUBLISH_BATCH]
            in_flight.append(
                [(record, self._send(record.signed, record.device_id)) for record in batch]
            )
            if len(in_flight) >= BATCHES_IN_FLIGHT:
                acked, complete = self._settle(engine, in_flight.popleft(), PUBLISH_TIMEOUT_S)
                done += acked
        while in_flight:
            # After a failed batch the others only count what was acknowledged already.
            acked, settled = self._settle(
                engine, in_flight.popleft(), PUBLISH_TIMEOUT_S if complete else 0.0
            )
            done += acked
            complete = complete and settled
        if done:
            log.info("published desired state for %d devices", done)
        return done
