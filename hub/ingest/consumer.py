"""The hub's ingest worker: MQTT 5 shared subscriptions into the database, nothing lost.

Each worker joins the shared subscriptions of HUB_INGEST_FILTERS, so several workers (in one
process or many) split the stream. The session is persistent (clean_start off, a session
expiry) and messages arrive at QoS 1 with MANUAL acknowledgements: a message is acknowledged
only once the transaction that stores it has committed. A worker killed at any point therefore
loses nothing: the broker redelivers what was not acknowledged, and the store is idempotent
on message ids, so what was committed but not yet acknowledged is not stored twice.

Messages are written in batches (up to `batch_max` messages, or what arrived within
`batch_window_s` of the first), one transaction each. A message that `decode` refuses
(malformed, oversized, a newer schema version, the wrong topic) is logged with the reason,
counted, and acknowledged: redelivering it would never make it acceptable.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from edge_agent.protocol.errors import MessageError
from edge_agent.protocol.messages import Envelope, MessageKind, decode
from edge_agent.protocol.topics import HUB_INGEST_FILTERS
from hub.ingest.store import now, store

log = logging.getLogger(__name__)

# Kinds that devices send to the hub; anything else on the ingest topics is refused.
INGESTED_KINDS = frozenset(
    {
        MessageKind.REPORTED_STATE,
        MessageKind.HEARTBEAT,
        MessageKind.INSTALL_EVENT,
        MessageKind.TELEMETRY,  # anonymous: decode() checked it names no device
    }
)
UNSTORABLE = "Unstorable"  # the database refused the message on its own (counted, acked)
_RETRY_MAX_S = 5.0


@dataclass(frozen=True)
class IngestSettings:
    host: str
    port: int
    client_id: str = "edge-hub-ingest"
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    keepalive_s: int = 30
    # How long the broker keeps this worker's session (and queues for it) while it is away.
    session_expiry_s: int = 7 * 24 * 3600
    # Unacknowledged messages the broker may have in flight to us: two batches' worth.
    receive_maximum: int = 1000
    batch_max: int = 500
    batch_window_s: float = 0.05
    filters: tuple[str, ...] = HUB_INGEST_FILTERS


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0  # new messages committed
    duplicates: int = 0  # delivered again, already stored
    batches: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # by reason (error class)


class _Delivery(NamedTuple):
    """What the worker needs of a message. Not the MQTTMessage itself: its MQTT 5 properties
    are dozens of dicts and lists, which the garbage collector traversed again and again
    while the message waited in the inbox (that cost more CPU than decoding it)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # the connection it arrived on: a packet id means nothing on another


class IngestConsumer:
    """start() / stop(); `stats` and `wait_idle()` for operators and tests."""

    def __init__(self, engine: Engine, settings: IngestSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.stats = IngestStats()
        # Deliveries from the network thread to the worker. A deque and two events rather
        # than a queue.Queue: the worker then wakes once per batch, not once per message
        # (with the GIL, each wake-up costs the network thread as much as the message).
        self._inbox: deque[_Delivery] = deque()
        self._arrived = threading.Event()  # the inbox stopped being empty
        self._full = threading.Event()  # the inbox holds a whole batch
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._generation = 0
        self._busy = False  # the worker holds a batch taken from the inbox
        self._worker: threading.Thread | None = None
        self.client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        if settings.username is not None:
            self.client.username_pw_set(settings.username, settings.password)
        if settings.tls is not None:
            self.client.tls_set_context(settings.tls)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and subscribe (waits for the SUBACK), then ingest on background threads."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        properties.ReceiveMaximum = self.settings.receive_maximum
        self._worker = threading.Thread(target=self._run, name="hub-ingest", daemon=True)
        self._worker.start()
        self.client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise TimeoutError(
                f"ingest: not subscribed at {self.settings.host}:{self.settings.port} "
                f"within {timeout_s} s"
            )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store and acknowledge what has arrived, then disconnect. What arrives later stays
        with the broker for the next start (the session persists)."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout_s)
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def connections(self) -> int:
        """How many times this worker has connected (reconnects included)."""
        with self._lock:
            return self._generation

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        """True once connected and subscribed (again, after a reconnect)."""
        return self._subscribed.wait(timeout_s)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """True once nothing is queued or being stored (for tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # The inbox first: the worker sets _busy before it takes a batch out of it.
            if not self._inbox and not self._busy:
                return True
            time.sleep(0.01)
        return False

    # -- MQTT callbacks (network thread) -----------------------------------------------

    def _on_connect(
        self,
        client: Client,
        _userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("ingest: the broker refused the connection: %s", reason_code)
            return
        with self._lock:
            self._generation += 1
        self._connected.set()
        log.info("ingest: connected (session present: %s)", flags.session_present)
        # Subscribing again on a present session is harmless and heals a lost subscription.
        options = SubscribeOptions(qos=1)
        client.subscribe([(topic, options) for topic in self.settings.filters])

    def _on_disconnect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._stopping.is_set():
            log.warning("ingest: disconnected (%s); reconnecting", reason_code)

    def _on_subscribe(
        self,
        _client: Client,
        _userdata: Any,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error("ingest: subscriptions refused: %s", ", ".join(refused))
            return
        self._subscribed.set()

    def _on_message(self, _client: Client, _userdata: Any, message: MQTTMessage) -> None:
        # The minimum, in the thread that also reads the socket. No lock: _generation changes
        # only in _on_connect, on this same thread.
        payload = bytes(message.payload)  # paho gives bytes: no copy
        self._inbox.append(
            _Delivery(message.topic, payload, message.mid, message.qos, self._generation)
        )
        waiting = len(self._inbox)
        if waiting == 1:
            self._arrived.set()
        if waiting == self.settings.batch_max:
            self._full.set()

    # -- the worker --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._collect()
            try:
                if batch:
                    self._ingest(batch)
                elif self._stopping.is_set():
                    return
            finally:
                self._busy = False

    def _collect(self) -> list[_Delivery]:
        """Up to `batch_max` deliveries: what arrived within `batch_window_s` of the first."""
        # Each event is cleared, then the inbox checked again: the network thread sets it
        # on a change it makes after the check, so no wake-up is lost.
        if not self._inbox:
            self._arrived.clear()
            if not self._inbox and not self._arrived.wait(0.05):
                return []
        if len(self._inbox) < self.settings.batch_max:
            self._full.clear()
            if len(self._inbox) < self.settings.batch_max:
                self._full.wait(self.settings.batch_window_s)
        batch: list[_Delivery] = []
        self._busy = True
        while len(batch) < self.settings.batch_max:
            try:
                batch.append(self._inbox.popleft())
            except IndexError:
                break
        return batch

    def _ingest(self, batch: list[_Delivery]) -> None:
        accepted: list[Envelope] = []
        for delivery in batch:
            envelope = self._accept(delivery.topic, delivery.payload)
            if envelope is not None:
                accepted.append(envelope)
        self.stats.received += len(batch)
        new = self._commit(accepted)
        if new is None:
            return  # stopped while the database was away: the broker keeps the batch
        self.stats.stored += new
        self.stats.duplicates += len(accepted) - new
        self.stats.batches += 1
        self._ack(batch)

    def _accept(self, topic: str, payload: bytes) -> Envelope | None:
        try:
            envelope = decode(topic, payload)
            if envelope.kind not in INGESTED_KINDS:
                raise MessageError(f"a {envelope.kind} message is not for the hub's ingest")
        except MessageError as exc:
            reason = type(exc).__name__
            self.stats.refused[reason] += 1
            log.warning("ingest: refused (%s): %s", reason, exc)
            return None
        return envelope

    def _commit(self, envelopes: list[Envelope]) -> int | None:
        """Store `envelopes` in one transaction, retrying while the database is away. A batch
        the database refuses for its content is stored message by message instead, so one
        bad message cannot hold up the rest. None: stopped before the database came back."""
        if not envelopes:
            return 0
        delay = 0.1
        while True:
            try:
                with self.engine.begin() as connection:
                    return store(connection, envelopes, now())
            except OperationalError as exc:
                if self._stopping.is_set():
                    log.error("ingest: stopping with a batch not stored: %s", exc)
                    return None
                log.error("ingest: database unavailable, retrying in %.1f s: %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
            except DBAPIError as exc:
                if len(envelopes) == 1:
                    self.stats.refused[UNSTORABLE] += 1
                    log.error(
                        "ingest: the database refused message %s: %s",
                        envelopes[0].message_id,
                        exc.orig,
                    )
                    return 0
                total = 0
                for envelope in envelopes:
                    one = self._commit([envelope])
                    if one is None:
                        return None
                    total += one
                return total

    def _ack(self, batch: list[_Delivery]) -> None:
        with self._lock:
            generation = self._generation
        for delivery in batch:
            # A packet id from an earlier connection may name another message now: leave
            # those to the broker, which redelivers them (stored already, so a duplicate).
            if delivery.qos > 0 and delivery.generation == generation:
                self.client.ack(delivery.mid, delivery.qos)
