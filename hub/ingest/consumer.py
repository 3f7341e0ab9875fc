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

A telemetry report is stored only with a valid anonymous token (hub.telemetry.keys): one
without (MissingToken), or with one its period's key did not make for its pseudonym
(InvalidToken), is refused the same way. A token is checked once per writer and then
remembered, so the cost (about 35 us) is paid once per device and week, not per report.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal, NamedTuple

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from edge_agent.mqtt import BrokerAddress, TlsFiles, connect_persistent, new_client, stop_client
from edge_agent.protocol.errors import MessageError
from edge_agent.protocol.messages import Envelope, MessageKind, decode
from edge_agent.protocol.telemetry import TelemetryReport
from edge_agent.protocol.topics import HUB_INGEST_FILTERS
from hub.ingest.store import now, store
from hub.telemetry.keys import (
    InvalidToken,
    PeriodKeys,
    TokenVerifier,
    load_or_create_seed,
)

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
READY = "ready"
PIPELINE_DEPTH = 2  # batches handed to a writer process before the first result is awaited


@dataclass(frozen=True)
class IngestSettings:
    host: str
    port: int
    client_id: str = "edge-hub-ingest"
    username: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None  # given: TLS, with this CA and client certificate
    keepalive_s: int = 30
    # How long the broker keeps this worker's session (and queues for it) while it is away.
    session_expiry_s: int = 7 * 24 * 3600
    # Unacknowledged messages the broker may have in flight to us: two batches' worth.
    receive_maximum: int = 1000
    batch_max: int = 500
    batch_window_s: float = 0.05
    filters: tuple[str, ...] = HUB_INGEST_FILTERS
    # "process": decode and store in a child process, so that the MQTT thread (paho, in
    # Python) and the database work each have a core instead of sharing one GIL.
    writer: Literal["thread", "process"] = "thread"
    # With writer="process": how many (batches go round, results come back in order).
    writer_processes: int = 1
    # The seed of the telemetry token keys (hub.telemetry.keys); None: telemetry is refused.
    token_seed_file: Path | None = None


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


class BatchResult(NamedTuple):
    received: int
    stored: int  # None from write(): stopped before the database came back
    duplicates: int
    refused: dict[str, int]


def writer_processes_for(url: str) -> int:
    """SQLite has one write lock, so one writer; PostgreSQL stores two batches at once
    while each waits on its round trips."""
    return 2 if url.startswith("postgresql") else 1


class BatchWriter:
    """Decodes a batch of (topic, payload) and stores what is acceptable in one
    transaction; counts what it refused and why."""

    def __init__(
        self,
        engine: Engine,
        stopping: threading.Event | None = None,
        tokens: TokenVerifier | None = None,
    ) -> None:
        self.engine = engine
        self.stopping = stopping or threading.Event()
        self.tokens = tokens  # None: no token key, so no telemetry can be verified
        self.refused: Counter[str] = Counter()

    def write(self, items: list[tuple[str, bytes]]) -> BatchResult | None:
        """None: stopped while the database was away (nothing may be acknowledged)."""
        refused_before = Counter(self.refused)
        accepted = [e for e in (self.accept(t, p) for t, p in items) if e is not None]
        new = self.commit(accepted)
        if new is None:
            return None
        refused = dict(self.refused - refused_before)
        return BatchResult(len(items), new, len(accepted) - new, refused)

    def accept(self, topic: str, payload: bytes) -> Envelope | None:
        try:
            envelope = decode(topic, payload)
            if envelope.kind not in INGESTED_KINDS:
                raise MessageError(f"a {envelope.kind} message is not for the hub's ingest")
            if isinstance(envelope.payload, TelemetryReport):
                if self.tokens is None:
                    raise InvalidToken("this ingest worker has no telemetry token key")
                self.tokens.check(envelope.payload)
        except MessageError as exc:
            reason = type(exc).__name__
            self.refused[reason] += 1
            log.warning("ingest: refused (%s): %s", reason, exc)
            return None
        return envelope

    def commit(self, envelopes: list[Envelope]) -> int | None:
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
                if self.stopping.is_set():
                    log.error("ingest: stopping with a batch not stored: %s", exc)
                    return None
                log.error("ingest: database unavailable, retrying in %.1f s: %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
            except DBAPIError as exc:
                if len(envelopes) == 1:
                    self.refused[UNSTORABLE] += 1
                    log.error(
                        "ingest: the database refused message %s: %s",
                        envelopes[0].message_id,
                        exc.orig,
                    )
                    return 0
                total = 0
                for envelope in envelopes:
                    one = self.commit([envelope])
                    if one is None:
                        return None
                    total += one
                return total


def token_verifier(seed_file: Path | None) -> TokenVerifier | None:
    return None if seed_file is None else TokenVerifier(PeriodKeys(load_or_create_seed(seed_file)))


def _writer_process(url: str, seed_file: Path | None, connection: Connection) -> None:
    """A child's loop: batches in, results out, until None or the parent goes away."""
    from edge_agent import logs
    from hub import db

    logs.configure()
    engine = db.make_engine(url)
    writer = BatchWriter(engine, tokens=token_verifier(seed_file))
    # A process that only decodes and stores: its objects die young and hold no cycles, so
    # collecting every 700 allocations (the default) is pure cost; the start-up objects
    # are frozen out of every later collection.
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    connection.send(READY)
    try:
        while (items := connection.recv()) is not None:
            connection.send(writer.write(items))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        engine.dispose()


class _ProcessWriter:
    """BatchWriter in a child process (spawned: the parent has threads), fed up to
    PIPELINE_DEPTH batches ahead so that it never waits for the parent to acknowledge one
    batch and collect the next. Results come back in order. A child that dies is replaced
    and every unanswered batch sent again: none was acknowledged, and storing is
    idempotent."""

    def __init__(
        self, engine: Engine, stopping: threading.Event, seed_file: Path | None = None
    ) -> None:
        self.url = engine.url.render_as_string(hide_password=False)
        self.seed_file = seed_file
        self.stopping = stopping
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None
        self._unanswered: deque[list[tuple[str, bytes]]] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._unanswered)

    def _start(self) -> Connection:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(
            target=_writer_process,
            args=(self.url, self.seed_file, child),
            name="hub-ingest-writer",
            daemon=True,
        )
        self._process.start()
        child.close()
        if parent.recv() != READY:  # imports and the database engine: seconds, not per batch
            raise EOFError("the writer process did not start")
        self._connection = parent
        for items in self._unanswered:  # a new child: everything unanswered again
            parent.send(items)
        return parent

    def start(self) -> None:
        """Start the child now, so that its start-up is not paid by the first batch."""
        if self._connection is None:
            self._start()

    def _replace(self, exc: BaseException) -> None:
        self._connection = None
        log.error("ingest: the writer process ended (%s); starting another", exc)
        time.sleep(0.5)

    def send(self, items: list[tuple[str, bytes]]) -> None:
        self._unanswered.append(items)
        try:
            if self._connection is None:
                self._start()  # sends it, with any others unanswered
            else:
                self._connection.send(items)
        except OSError as exc:
            self._replace(exc)

    def receive(self) -> BatchResult | None:
        """The oldest unanswered batch's result; None when stopping without one."""
        while True:
            try:
                connection = self._connection or self._start()
                result: BatchResult | None = connection.recv()
            except (EOFError, OSError) as exc:
                if self.stopping.is_set():
                    return None
                self._replace(exc)
                continue
            self._unanswered.popleft()
            return result

    def close(self, timeout_s: float) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):  # already gone
                self._connection.send(None)
        if self._process is not None:
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout_s)


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
        self._writer = BatchWriter(engine, self._stopping, token_verifier(settings.token_seed_file))
        self._process_writers = (
            [
                _ProcessWriter(engine, self._stopping, settings.token_seed_file)
                for _ in range(settings.writer_processes)
            ]
            if settings.writer == "process"
            else []
        )
        self.client = new_client(settings.client_id, tls=settings.tls, manual_ack=True)
        if settings.username is not None:
            self.client.username_pw_set(settings.username, settings.password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and subscribe (waits for the SUBACK), then ingest on background threads."""
        for writer in self._process_writers:
            writer.start()
        self._worker = threading.Thread(target=self._run, name="hub-ingest", daemon=True)
        self._worker.start()
        connect_persistent(
            self.client,
            BrokerAddress(self.settings.host, self.settings.port, self.settings.tls is not None),
            keepalive_s=self.settings.keepalive_s,
            session_expiry_s=self.settings.session_expiry_s,
            receive_maximum=self.settings.receive_maximum,
        )
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
        for writer in self._process_writers:
            writer.close(timeout_s)
        stop_client(self.client)

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
        if self._process_writers:
            self._run_pipelined(self._process_writers)
            return
        while True:
            batch = self._collect()
            try:
                if batch:
                    self._ingest(batch)
                elif self._stopping.is_set():
                    return
            finally:
                self._busy = False

    def _run_pipelined(self, writers: list[_ProcessWriter]) -> None:
        """The children store batch k while this thread collects and sends batch k+1, and
        acknowledges batch k once its result is back. Batches go to the writers in turn;
        the oldest batch's result is always awaited first, so acks keep their order."""
        sent: deque[tuple[list[_Delivery], _ProcessWriter]] = deque()
        turn = 0
        while True:
            batch = self._collect()
            if batch:
                writer = writers[turn % len(writers)]
                turn += 1
                writer.send([(d.topic, d.payload) for d in batch])
                sent.append((batch, writer))
            if sent and (len(sent) >= PIPELINE_DEPTH * len(writers) or not batch):
                oldest, writer = sent.popleft()
                self._finish(oldest, writer.receive())
            elif not batch and self._stopping.is_set():
                return
            self._busy = bool(sent)

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
        self._finish(batch, self._writer.write([(d.topic, d.payload) for d in batch]))

    def _finish(self, batch: list[_Delivery], result: BatchResult | None) -> None:
        if result is None:
            return  # stopped while the database was away: the broker keeps the batch
        self.stats.received += result.received
        self.stats.stored += result.stored
        self.stats.duplicates += result.duplicates
        self.stats.refused.update(result.refused)
        self.stats.batches += 1
        self._ack(batch)

    def _ack(self, batch: list[_Delivery]) -> None:
        with self._lock:
            generation = self._generation
        for delivery in batch:
            # A packet id from an earlier connection may name another message now: leave
            # those to the broker, which redelivers them (stored already, so a duplicate).
            if delivery.qos > 0 and delivery.generation == generation:
                self.client.ack(delivery.mid, delivery.qos)
