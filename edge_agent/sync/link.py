"""The MQTT link to the hub: publishes the outbox, receives signed desired state.

A paho-mqtt 2.2 client, MQTT 5, QoS 1, client id = device id, persistent session
(clean_start False + a session expiry interval) so the broker keeps the desired-state
subscription and what it queued while the device was away.

Publishing (promise 6). The durable outbox is the only queue: a flusher thread reads
`outbox.pending()` and hands messages to paho only while connected, at most
`max_in_flight` unacknowledged at a time (far below paho's 65,535 message ids, where ids
would collide). A PUBACK with a success reason deletes the row (`ack_many`, batched in the
flusher thread, not in paho's network thread). A PUBACK with a failure reason (135, not
authorized, and the like) will never succeed on a retry: the message is dropped from the
outbox, counted in the status and logged with the reason, so it cannot block the queue.
After every reconnect the flusher publishes again, from the outbox, whatever was not
acknowledged (paho's own resend of its window proved unreliable: it stops at the first
message it had queued); if the process dies they are still in the outbox and go again
after the restart. Duplicates on the wire are possible, loss is not: the hub de-duplicates
by message id. Oversized payloads cannot reach the wire: the outbox refuses them at put().

Reconnecting. paho's own loop reconnects (connect_async + loop_start, which also retries the
first connection); before each attempt we set its delay (`reconnect_delay_set(d, d)`) to
our own exponential backoff with full jitter, min..max from the config, reset after a
successful CONNACK. paho's built-in doubling has no jitter, and a fleet that lost its broker
would otherwise come back all at once.

Desired state (promise 3). On a message on the device's desired topic: decode, verify with
`verify_desired` against the trusted director keys and the last accepted sequence
(persisted). The same sequence again (the retained message after every reconnect) is a
silent no-op; anything refused is logged with the reason and changes nothing. A verified
state goes to the `on_desired` callback in one worker thread (never paho's network thread);
the sequence is persisted once the callback returns, so a crash while acting redelivers.

Status. A small JSON file (atomic writes) that `edge-agent status` reads from another
process: connected or not and since when, last successful sync, outbox depth, drops.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.mqtt import BrokerAddress, TlsFiles, connect_persistent, new_client, stop_client
from edge_agent.protocol import (
    DesiredState,
    DesiredStateRefused,
    DeviceTopic,
    Envelope,
    Heartbeat,
    InstallEvent,
    MessageError,
    Replayed,
    ReportedState,
    SignedDesired,
    TelemetryReport,
    check_name,
    decode,
    device_topic,
    encode,
    topic_for,
    verify_desired,
)
from edge_agent.sync.outbox import Outbox, OutboxKind
from edge_agent.sync.state import STATUS_FILE, LinkStatus, SequenceFile, save_status

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 1000
STATUS_MIN_INTERVAL_S = 1.0  # status file writes at most this often, except on (dis)connect
_PENDING_PAGE = 500
# MQTT 5 PUBACK 16, "no matching subscribers": accepted, then dropped. After a broker
# restart the hub's shared subscriptions are gone until its workers reconnect, so such
# a message stays in the outbox and is sent again after this pause.
NO_MATCHING_SUBSCRIBERS = 16
UNHEARD_RETRY_SECONDS = 2.0


def enqueue(outbox: Outbox, envelope: Envelope) -> None:
    """Put a device message into the outbox on its topic: state kinds are never dropped,
    install events neither (OutboxKind.EVENT); telemetry may be (OutboxKind.TELEMETRY)."""
    payload = envelope.payload
    if isinstance(payload, TelemetryReport):
        kind = OutboxKind.TELEMETRY
    elif isinstance(payload, InstallEvent):
        kind = OutboxKind.EVENT
    elif isinstance(payload, ReportedState | Heartbeat):
        kind = OutboxKind.STATE
    else:
        raise ValueError(f"a device does not send {envelope.kind} messages")
    outbox.put(topic_for(envelope), encode(envelope), kind, envelope.message_id)


class Backoff:
    """Exponential backoff with full jitter: uniform(min, min(max, min * 2**failures))."""

    def __init__(
        self, min_s: float, max_s: float, rand: Callable[[float, float], float] = random.uniform
    ) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"need 0 < reconnect min ({min_s}) <= max ({max_s})")
        self.min_s, self.max_s, self._rand = min_s, max_s, rand
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.min_s * 2 ** min(self.failures, 32))
        self.failures += 1
        return self._rand(self.min_s, ceiling)

    def reset(self) -> None:
        self.failures = 0


class Link:
    def __init__(
        self,
        outbox: Outbox,
        *,
        device_id: str,
        broker: BrokerAddress,
        state_dir: Path,
        trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
        on_desired: Callable[[DesiredState], None] | None = None,
        tls: TlsFiles | None = None,
        keepalive_s: int = 60,
        session_expiry_s: int = 7 * 24 * 3600,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 120.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 0 < max_in_flight <= 20_000:
            raise ValueError(f"max_in_flight must be 1..20000, got {max_in_flight}")
        self.outbox = outbox
        self.device_id = check_name(device_id)
        self.broker = broker
        self.state_dir = state_dir
        self.status_path = state_dir / STATUS_FILE
        self.sequences = SequenceFile(state_dir / "desired-sequence.json")
        self.trusted_keys = dict(trusted_keys or {})
        self.on_desired = on_desired
        self.max_in_flight = max_in_flight
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self.desired_topic = device_topic(self.device_id, DeviceTopic.DESIRED)
        self._clock = clock
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = False
        self._in_flight: dict[int, tuple[str, int]] = {}  # mid -> (message id, seq)
        self._cursor: int | None = None  # highest seq handed to paho
        self._pubacks: queue.SimpleQueue[tuple[int, ReasonCode]] = queue.SimpleQueue()
        self._reset_in_flight = False
        self._hold_until = 0.0  # monotonic time before which nothing is published
        self._dispatched_sequence = 0
        self._status = LinkStatus(
            device_id=self.device_id,
            broker=str(broker),
            since=clock(),
            updated_at=clock(),
            pid=os.getpid(),
        )
        self._status_written = 0.0
        self._flusher: threading.Thread | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="desired")
        self.client = self._make_client(tls)

    # --- setup ---------------------------------------------------------------------------

    def _make_client(self, tls: TlsFiles | None) -> Client:
        client = new_client(self.device_id, tls=tls, use_tls=self.broker.tls)
        # paho's own window equals ours, so nothing waits in its RAM queue unsent.
        client.max_inflight_messages_set(self.max_in_flight)
        client.reconnect_delay_set(1, 1)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        try:
            self.sequences.load()  # refuse to start on a damaged file, not at the first message
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        self._refresh_counts()
        self._write_status(force=True)
        connect_persistent(
            self.client,
            self.broker,
            keepalive_s=self.keepalive_s,
            session_expiry_s=self.session_expiry_s,
        )
        self._flusher = threading.Thread(target=self._flush_loop, name="outbox-flush", daemon=True)
        self._flusher.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(10)
        stop_client(self.client)
        self._worker.shutdown(wait=True)
        with self._lock:
            self._connected = False
        self._drain_acks()
        self._refresh_counts()
        self._set_connected(False, force=True)

    def __enter__(self) -> Link:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- public --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def flush(self) -> None:
        """Nudge the flusher: new messages are in the outbox."""
        self._wake.set()

    def send(self, envelope: Envelope) -> None:
        """Queue a device message durably and nudge the flusher."""
        enqueue(self.outbox, envelope)
        self.flush()

    def status(self) -> LinkStatus:
        with self._lock:
            return self._status.model_copy()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    # --- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(
        self,
        client: Client,
        _userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused the connection: %s", self.broker, reason_code)
            self._schedule_retry(str(reason_code))
            return
        self._backoff.reset()
        client.reconnect_delay_set(1, 1)
        log.info(
            "connected to %s as %s (session present: %s)",
            self.broker,
            self.device_id,
            flags.session_present,
        )
        # Every time: a lost session loses its subscriptions. The retained desired state
        # then comes again and is a no-op by its sequence.
        client.subscribe(self.desired_topic, qos=1)
        with self._lock:
            self._connected = True
            # Publish again whatever is unacknowledged, from the outbox: paho's own resend
            # of its in-flight window after a reconnect is not reliable (it stops at the
            # first message it had queued). Duplicates are the hub's to drop.
            self._reset_in_flight = True
            self._status.last_error = None
        self._set_connected(True, force=True)
        self._wake.set()

    def _on_connect_fail(self, _client: Client, _userdata: Any) -> None:
        self._schedule_retry("connection failed")

    def _on_disconnect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if not self._stop.is_set():
            log.warning("disconnected from %s: %s", self.broker, reason_code)
        with self._lock:
            was = self._connected
            self._connected = False
        if was:
            self._set_connected(False, force=True)
        if not self._stop.is_set():
            self._schedule_retry(str(reason_code))

    def _schedule_retry(self, reason: str) -> None:
        delay = self._backoff.next_delay()
        # paho sleeps whole seconds in its wait loop; it takes ints per its signature.
        whole = max(1, round(delay))
        self.client.reconnect_delay_set(whole, whole)
        with self._lock:
            self._status.last_error = reason
        log.debug("next connection attempt to %s in %d s (%s)", self.broker, whole, reason)

    def _on_publish(
        self,
        _client: Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        # Only queued here: the flusher thread alone matches mids to messages, so a PUBACK
        # that arrives before publish() has returned is matched after it was recorded.
        self._pubacks.put((mid, reason_code))
        self._wake.set()

    def _on_message(self, _client: Client, _userdata: Any, message: MQTTMessage) -> None:
        if message.topic != self.desired_topic:
            log.warning("ignored a message on %s: not subscribed here", message.topic)
            return
        try:
            envelope = decode(message.topic, bytes(message.payload))
        except MessageError as exc:
            log.warning("desired state refused: %s", exc)
            return
        if not isinstance(envelope.payload, SignedDesired):
            log.warning("desired state refused: a %s message on %s", envelope.kind, message.topic)
            return
        signed = envelope.payload
        with self._lock:
            last = max(self.sequences.load(), self._dispatched_sequence)
        try:
            state = verify_desired(
                signed,
                self.trusted_keys,
                device_id=self.device_id,
                now=self._clock(),
                last_sequence=last,
            )
        except Replayed as exc:
            if exc.sequence == last:
                log.debug("desired state %d seen again (retained): nothing to do", last)
            else:
                log.warning("desired state refused: %s", exc)
            return
        except DesiredStateRefused as exc:
            log.warning("desired state refused: %s", exc)
            return
        with self._lock:
            self._dispatched_sequence = state.sequence
            self._status.last_sync_at = self._clock()
        log.info("desired state %d accepted", state.sequence)
        self._worker.submit(self._deliver, state)

    def _deliver(self, state: DesiredState) -> None:
        try:
            if self.on_desired is not None:
                self.on_desired(state)
        except Exception:
            log.exception("acting on desired state %d failed", state.sequence)
            with self._lock:  # not persisted: the retained message is acted on again later
                if self._dispatched_sequence == state.sequence:
                    self._dispatched_sequence = 0
            return
        self.sequences.save(state.sequence)

    # --- flusher thread ------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._drain_acks()
                if self.connected:
                    self._publish_pending()
                self._refresh_counts()
                self._write_status()
            except Exception:  # the loop must outlive a bad moment (disk full, locked db)
                log.exception("outbox flush failed; retrying")
                self._stop.wait(1.0)

    def _drain_acks(self) -> None:
        acked: list[str] = []
        denied: list[tuple[str, str]] = []
        unheard = False
        with self._lock:
            while True:
                try:
                    mid, reason_code = self._pubacks.get_nowait()
                except queue.Empty:
                    break
                entry = self._in_flight.pop(mid, None)
                if entry is None:
                    continue  # from before a reconnect: that message is published again
                if reason_code.is_failure:
                    denied.append((entry[0], str(reason_code)))
                elif reason_code.value == NO_MATCHING_SUBSCRIBERS:
                    unheard = True  # kept: published again after a pause
                else:
                    acked.append(entry[0])
            if unheard:
                self._reset_in_flight = True
                self._hold_until = time.monotonic() + UNHEARD_RETRY_SECONDS
            if self._reset_in_flight and self._connected:
                self._reset_in_flight = False
                self._in_flight.clear()
                self._cursor = None
        if acked:
            self.outbox.ack_many(acked)
            with self._lock:
                self._status.last_sync_at = self._clock()
        for message_id, reason in denied:
            log.error(
                "broker refused message %s (%s): dropped, a retry cannot succeed",
                message_id,
                reason,
            )
        if denied:
            self.outbox.ack_many(m for m, _ in denied)
            with self._lock:
                self._status.denied_messages += len(denied)

    def _publish_pending(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() < self._hold_until:
                return
            with self._lock:
                room = self.max_in_flight - len(self._in_flight)
                cursor = self._cursor
            if room <= 0:
                return
            items = self.outbox.pending(min(room, _PENDING_PAGE), after=cursor)
            if not items:
                return
            sent: list[str] = []
            for item in items:
                if not self.connected:
                    break
                # Not under our lock: paho calls on_publish holding its own locks, and
                # publish() takes them.
                info = self.client.publish(item.topic, item.payload, qos=1)
                if info.rc not in (
                    MQTTErrorCode.MQTT_ERR_SUCCESS,
                    MQTTErrorCode.MQTT_ERR_NO_CONN,
                ):
                    log.warning(
                        "publish of %s failed (%s): retried later", item.message_id, info.rc
                    )
                    return
                with self._lock:
                    self._cursor = item.seq
                    self._in_flight[info.mid] = (item.message_id, item.seq)
                sent.append(item.message_id)
            if sent:
                self.outbox.record_attempt(sent)
            if len(sent) < len(items):
                return

    # --- status --------------------------------------------------------------------------

    def _refresh_counts(self) -> None:
        depth, dropped = self.outbox.depth(), self.outbox.dropped_telemetry()
        with self._lock:
            self._status.outbox_depth = depth
            self._status.dropped_telemetry = dropped

    def _set_connected(self, connected: bool, *, force: bool = False) -> None:
        with self._lock:
            if self._status.connected != connected:
                self._status.connected = connected
                self._status.since = self._clock()
        self._write_status(force=force)

    def _write_status(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._status_written < STATUS_MIN_INTERVAL_S:
                return
            self._status_written = now
            self._status.updated_at = self._clock()
            snapshot = self._status.model_copy()
        try:
            save_status(self.status_path, snapshot)
        except OSError as exc:
            log.warning("could not write %s: %s", self.status_path, exc)
