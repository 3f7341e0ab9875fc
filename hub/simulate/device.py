"""One simulated device: the agent's protocol on a paho client driven by a shared loop.

What it does is what the agent does (edge_agent.sync.link and .orchestrate), minus the
model store: it connects with its own certificate (client id = its CN), subscribes to its
desired topic, decodes and verifies every desired state with `verify_desired` against the
director keys and its last accepted sequence, then "installs" through the stub runtime and
publishes InstallEvent(start), InstallEvent(healthy | failed) and a ReportedState, QoS 1,
in the agent's envelopes. A desired state with a maintenance window that is closed is
reported as downloaded and activated when the window opens, as the agent does.

Everything here runs in the ClientLoop's thread. Messages made while offline, or while the
device is told to hold its reports, wait in memory and go out when it is back: a late
report carries its original `sent_at`, like the agent's outbox.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.mqtt import BrokerAddress, new_client
from edge_agent.protocol import (
    DesiredState,
    DesiredStateRefused,
    DeviceTopic,
    Envelope,
    InstallEvent,
    MessageError,
    ModelReport,
    Replayed,
    ReportedState,
    SignedDesired,
    UpdateEvent,
    UpdatePhase,
    UpdateResult,
    decode,
    device_topic,
    encode,
    topic_for,
    verify_desired,
)
from hub.simulate.enroll import Enrolled
from hub.simulate.loop import ClientLoop
from hub.simulate.runtime import StubRuntime

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 86_400
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 10.0

Verified = Callable[["SimulatedDevice", DesiredState], None]


class SimulatedDevice:
    def __init__(
        self,
        enrolled: Enrolled,
        runtime: StubRuntime,
        loop: ClientLoop,
        *,
        broker: BrokerAddress,
        director_keys: Mapping[str, Ed25519PublicKey],
        agent_version: str,
        keepalive_s: int,
        on_verified: Verified | None = None,
    ) -> None:
        self.device_id = enrolled.device_id
        self.enrolled = enrolled
        self.runtime = runtime
        self.rng: random.Random = runtime.rng
        self.loop = loop
        self.broker = broker
        self.director_keys = director_keys
        self.agent_version = agent_version
        self.keepalive_s = keepalive_s
        self.on_verified = on_verified
        # What the tests and the benchmark read (written in the loop's thread only).
        self.last_sequence = 0
        self.verified_at: float | None = None  # time.monotonic() of the last accepted state
        self.received_at: float | None = None  # time.monotonic() of the last desired message
        self.desired: DesiredState | None = None
        self.refusals: list[str] = []  # why desired states were refused
        self.sent: list[Envelope] = []  # every message handed to the broker
        self.waiting_for_window: dict[str, str] = {}  # model -> version downloaded
        self.connected = False
        self.subscribed = False
        self.wants_online = False
        self.hold_reports = False
        self._unsent: deque[Envelope] = deque()
        self._client: Client | None = None
        self._backoff = RECONNECT_MIN_S

    # --- connection ----------------------------------------------------------------------

    def _make_client(self) -> Client:
        client = new_client(self.device_id, tls=self.enrolled.tls.client())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.loop.attach(client)
        return client

    def connect(self) -> None:
        """Connect now (blocking TLS handshake, in the loop's thread)."""
        self.wants_online = True
        if self._client is None:
            self._client = self._make_client()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self._client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=self.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except OSError as exc:  # refused, TLS refused, reset: like the agent, try again
            log.info("%s: connect failed (%s); retrying", self.device_id, exc)
            self._retry_later()

    def _retry_later(self) -> None:
        delay = self.rng.uniform(0, self._backoff)  # full jitter, as the agent's link
        self._backoff = min(self._backoff * 2, RECONNECT_MAX_S)
        self.loop.call_later(delay, self._reconnect_if_wanted)

    def _reconnect_if_wanted(self) -> None:
        if self.wants_online and not self.connected:
            self.connect()

    def disconnect(self) -> None:
        """Go offline (stay so until connect())."""
        self.wants_online = False
        if self._client is not None:
            self._client.disconnect()

    def close(self) -> None:
        self.disconnect()
        if self._client is not None:
            self.loop.detach(self._client)

    def _on_connect(
        self,
        client: Client,
        _userdata: Any,
        _flags: ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("%s: broker refused the connection: %s", self.device_id, reason)
            return
        self.connected = True
        self._backoff = RECONNECT_MIN_S
        # Every time, as the agent does: the retained desired state comes with the SUBACK.
        client.subscribe(device_topic(self.device_id, DeviceTopic.DESIRED), qos=1)
        self._flush()

    def _on_subscribe(self, *_args: Any) -> None:
        self.subscribed = True

    def _on_disconnect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: DisconnectFlags,
        _reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.connected = self.subscribed = False
        if self.wants_online:
            self._retry_later()

    # --- sending -------------------------------------------------------------------------

    def send(self, envelope: Envelope) -> None:
        """Publish now when possible, else keep it for later (the agent's outbox)."""
        self._unsent.append(envelope)
        self._flush()

    def release_reports(self) -> None:
        """Stop holding reports and send what waited (a device reporting late)."""
        self.hold_reports = False
        self._flush()

    def _flush(self) -> None:
        if not self.connected or self.hold_reports or self._client is None:
            return
        while self._unsent:
            envelope = self._unsent.popleft()
            self._client.publish(topic_for(envelope), encode(envelope), qos=1)
            self.sent.append(envelope)

    def _report(self, payload: InstallEvent | ReportedState) -> None:
        self.send(Envelope.of(payload, device_id=self.device_id))

    # --- desired state -------------------------------------------------------------------

    def _on_message(self, _client: Client, _userdata: Any, message: MQTTMessage) -> None:
        self.received_at = time.monotonic()
        try:
            envelope = decode(message.topic, bytes(message.payload))
            if not isinstance(envelope.payload, SignedDesired):
                raise MessageError(f"a {envelope.kind} message on the desired topic")
            state = verify_desired(
                envelope.payload,
                self.director_keys,
                device_id=self.device_id,
                now=datetime.now(UTC),
                last_sequence=self.last_sequence,
            )
        except Replayed as exc:
            if exc.sequence != exc.last_sequence:  # the same state again is no news
                self.refusals.append(str(exc))
            return
        except (MessageError, DesiredStateRefused) as exc:
            self.refusals.append(str(exc))
            log.info("%s: desired state refused: %s", self.device_id, exc)
            return
        self.last_sequence = state.sequence
        self.desired = state
        self.verified_at = time.monotonic()
        if self.on_verified is not None:
            self.on_verified(self, state)
        self._apply(state)

    def _apply(self, state: DesiredState) -> None:
        changes = {
            model: release.version
            for model, release in state.models.items()
            if self.runtime.active.get(model) != release.version
        }
        for model, version in sorted(changes.items()):
            self._report(
                InstallEvent(
                    model=model,
                    version=version,
                    event=UpdateEvent.START,
                    from_version=self.runtime.active.get(model),
                )
            )
        if not changes:
            self._report_state(state.sequence, {})
            return
        latency = max(self.runtime.install_latency(v) for v in changes.values())
        self.loop.call_later(latency, lambda: self._downloaded(state, changes))

    def _downloaded(self, state: DesiredState, changes: dict[str, str]) -> None:
        if state.sequence != self.last_sequence:
            return  # a newer desired state came meanwhile and has its own install
        now = datetime.now(UTC)
        window = state.window
        if window is not None and not window.is_open(now):
            opens = window.next_open(now)
            for model, version in sorted(changes.items()):
                self.waiting_for_window[model] = version
                self._report(
                    InstallEvent(model=model, version=version, event=UpdateEvent.DOWNLOADED)
                )
            self._report_state(state.sequence, {}, waiting=changes, opens=opens)
            if opens is not None:
                delay = (opens - now).total_seconds()
                self.loop.call_later(delay, lambda: self._downloaded(state, changes))
            return
        results: dict[str, str | None] = {}
        for model, version in sorted(changes.items()):
            self.waiting_for_window.pop(model, None)
            before = self.runtime.active.get(model)
            error = self.runtime.install(model, version, state.rollbacks.get(model))
            results[model] = error
            self._report(
                InstallEvent(
                    model=model,
                    version=version,
                    event=UpdateEvent.FAILED if error else UpdateEvent.HEALTHY,
                    from_version=before,
                    error=error,
                )
            )
        self._report_state(state.sequence, results)

    def _report_state(
        self,
        sequence: int,
        results: Mapping[str, str | None],
        *,
        waiting: Mapping[str, str] | None = None,
        opens: datetime | None = None,
    ) -> None:
        models = {}
        for model, active in self.runtime.active.items():
            report = ModelReport(active=active, previous=self.runtime.previous.get(model))
            if model in results:
                error = results[model]
                report = report.model_copy(
                    update={
                        "last_result": UpdateResult.FAILED if error else UpdateResult.SUCCEEDED,
                        "last_error": error,
                    }
                )
            models[model] = report
        for model, version in (waiting or {}).items():
            base = models.get(model, ModelReport())
            models[model] = base.model_copy(
                update={"pending": version, "phase": UpdatePhase.IDLE, "activates_at": opens}
            )
        for model, error in results.items():
            if model not in models:  # failed with nothing active before
                models[model] = ModelReport(last_result=UpdateResult.FAILED, last_error=error)
        self._report(
            ReportedState(
                agent_version=self.agent_version, models=models, desired_sequence=sequence
            )
        )
