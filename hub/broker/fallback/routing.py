"""What the fallback broker knows, without any I/O: sessions, subscriptions, retained
messages, and where each published message goes.

MQTT 5 semantics the fleet relies on, and nothing more:
- a session outlives its connection for its expiry interval (`clean_start` off): its
  subscriptions stay, and QoS 1 messages for it queue until it is back;
- QoS 1 messages sent but not yet acknowledged are sent again, marked duplicate, when the
  session resumes;
- `$share/<group>/<filter>` spreads messages over the group's sessions, connected ones
  first, in turn;
- the last retained message of a topic goes to every new (non-shared) subscription.

Everything lives in memory: a restart of the broker forgets it (the hub warns so).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from paho.mqtt.client import topic_matches_sub

log = logging.getLogger(__name__)

SHARE_PREFIX = "$share/"
MAX_PACKET_ID = 65535


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Subscription:
    """One topic filter of a session; `share_group` for `$share/<group>/<filter>`."""

    topic_filter: str
    qos: int
    share_group: str | None = None
    no_local: bool = False
    retain_as_published: bool = False

    @classmethod
    def parse(
        cls, pattern: str, qos: int, *, no_local: bool = False, retain_as_published: bool = False
    ) -> Subscription:
        """ValueError for a malformed `$share/` filter."""
        group: str | None = None
        topic_filter = pattern
        if pattern.startswith(SHARE_PREFIX):
            group, _, topic_filter = pattern[len(SHARE_PREFIX) :].partition("/")
            if not group or not topic_filter or any(c in group for c in "+#"):
                raise ValueError(f"malformed shared subscription {pattern!r}")
        return cls(topic_filter, qos, group, no_local, retain_as_published)

    @property
    def pattern(self) -> str:
        if self.share_group is None:
            return self.topic_filter
        return f"{SHARE_PREFIX}{self.share_group}/{self.topic_filter}"

    def matches(self, topic: str) -> bool:
        # Filters starting with a wildcard never match `$` topics (MQTT 5, 4.7.2).
        if topic.startswith("$") and self.topic_filter[:1] in ("+", "#"):
            return False
        return bool(topic_matches_sub(self.topic_filter, topic))


Send = Callable[[int | None, Message, bool], None]
"""Writes one PUBLISH to a connection: packet id (None for QoS 0), message, duplicate."""


@dataclass
class Session:
    """A client's session. `send` is set while it is connected."""

    client_id: str
    expiry_s: int = 0
    max_queued: int = 1_000_000
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    send: Send | None = None
    receive_max: int = 65535
    disconnected_at: float | None = None
    dropped: int = 0
    _queue: deque[Message] = field(default_factory=deque)
    _in_flight: OrderedDict[int, Message] = field(default_factory=OrderedDict)
    _next_id: int = 1

    @property
    def connected(self) -> bool:
        return self.send is not None

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._in_flight)

    def expired(self, now: float) -> bool:
        return (
            self.send is None
            and self.disconnected_at is not None
            and now - self.disconnected_at >= self.expiry_s
        )

    def deliver(self, message: Message) -> None:
        """QoS 0 goes out now or not at all; QoS 1 queues and goes out as the client's
        receive maximum allows."""
        if message.qos == 0:
            if self.send is not None:
                self.send(None, message, False)
            return
        if len(self._queue) >= self.max_queued:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "queue of %s is full (%d messages): dropped %d so far",
                    self.client_id,
                    self.max_queued,
                    self.dropped,
                )
            return
        self._queue.append(message)
        self.pump()

    def pump(self) -> None:
        while self.send is not None and self._queue and len(self._in_flight) < self.receive_max:
            message = self._queue.popleft()
            packet_id = self._allocate_id()
            self._in_flight[packet_id] = message
            self.send(packet_id, message, False)

    def acknowledged(self, packet_id: int) -> bool:
        """A PUBACK: the message is done; False for an id we did not send."""
        if self._in_flight.pop(packet_id, None) is None:
            return False
        self.pump()
        return True

    def attach(self, send: Send, receive_max: int) -> None:
        """The client is (back) on: unacknowledged messages again, as duplicates, then the
        queue."""
        self.send = send
        self.receive_max = receive_max
        self.disconnected_at = None
        for packet_id, message in self._in_flight.items():
            send(packet_id, message, True)
        self.pump()

    def detach(self) -> None:
        self.send = None
        self.disconnected_at = time.monotonic()

    def _allocate_id(self) -> int:
        for _ in range(MAX_PACKET_ID):
            packet_id = self._next_id
            self._next_id = packet_id % MAX_PACKET_ID + 1
            if packet_id not in self._in_flight:
                return packet_id
        raise RuntimeError("no free packet id")  # receive_max <= 65535 keeps one free


class Router:
    """Sessions by client id, retained messages by topic, and the routing between them."""

    def __init__(self, *, max_queued: int = 1_000_000) -> None:
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self.max_queued = max_queued
        self._turns: dict[tuple[str, str], int] = {}

    def open_session(self, client_id: str, *, clean_start: bool, expiry_s: int) -> bool:
        """The session a CONNECT asks for; True when an earlier one resumes."""
        session = self.sessions.get(client_id)
        if session is not None and session.expired(time.monotonic()):
            session = None  # the periodic sweep had not come to it yet
        present = session is not None and not clean_start
        if session is None or clean_start:
            session = Session(client_id, max_queued=self.max_queued)
            self.sessions[client_id] = session
        session.expiry_s = expiry_s
        return present

    def close_session(self, client_id: str) -> None:
        """The connection ended: the session stays for its expiry interval."""
        session = self.sessions.get(client_id)
        if session is None:
            return
        session.detach()
        if session.expiry_s == 0:
            del self.sessions[client_id]

    def expire(self, now: float) -> int:
        gone = [cid for cid, s in self.sessions.items() if s.expired(now)]
        for client_id in gone:
            del self.sessions[client_id]
        return len(gone)

    def subscribe(self, client_id: str, subscription: Subscription) -> list[Message]:
        """Add (or replace) a subscription; returns the retained messages it receives."""
        session = self.sessions[client_id]
        session.subscriptions[subscription.pattern] = subscription
        if subscription.share_group is not None:
            return []  # no retained messages for shared subscriptions (MQTT 5, 4.8.2)
        return [
            Message(m.topic, m.payload, min(m.qos, subscription.qos), True)
            for m in self.retained.values()
            if subscription.matches(m.topic)
        ]

    def unsubscribe(self, client_id: str, pattern: str) -> bool:
        return self.sessions[client_id].subscriptions.pop(pattern, None) is not None

    def publish(self, message: Message, sender: str | None = None) -> int:
        """Route one message; returns how many sessions it went to."""
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        direct: dict[str, Subscription] = {}
        shared: dict[tuple[str, str], list[tuple[Session, Subscription]]] = {}
        for session in self.sessions.values():
            for sub in session.subscriptions.values():
                if not sub.matches(message.topic):
                    continue
                if sub.share_group is not None:
                    key = (sub.share_group, sub.topic_filter)
                    shared.setdefault(key, []).append((session, sub))
                elif not (sub.no_local and session.client_id == sender):
                    best = direct.get(session.client_id)
                    if best is None or sub.qos > best.qos:
                        direct[session.client_id] = sub
        for client_id, sub in direct.items():
            self.sessions[client_id].deliver(self._as_delivered(message, sub))
        for key, members in shared.items():
            session, sub = self._next_member(key, members)
            session.deliver(self._as_delivered(message, sub))
        return len(direct) + len(shared)

    def _next_member(
        self, key: tuple[str, str], members: list[tuple[Session, Subscription]]
    ) -> tuple[Session, Subscription]:
        """The group's next member in turn, a connected one when any is."""
        members.sort(key=lambda pair: pair[0].client_id)
        online = [pair for pair in members if pair[0].connected] or members
        turn = self._turns.get(key, 0)
        self._turns[key] = turn + 1
        return online[turn % len(online)]

    @staticmethod
    def _as_delivered(message: Message, sub: Subscription) -> Message:
        retain = message.retain and sub.retain_as_published
        return Message(message.topic, message.payload, min(message.qos, sub.qos), retain)
