"""Messages between the agent and the hub: one envelope, a few payloads, one codec.

Every message is an `Envelope` (JSON, UTF-8) whose `kind` says which payload it carries
and which topic it belongs on. `schema_version` is the major version: it changes only when
an older reader would misread a message; added fields keep it and are preserved by older
readers (extra="allow"), so an older agent survives a newer hub.

`decode` is the one way in for received bytes. It refuses, with a MessageError that names
the problem: anything over MAX_MESSAGE_BYTES (before parsing), what is not JSON or not a
valid message, a newer major version, and a message on a topic that is not its own. The
broker's ACL lets a device publish only on its own topics; `decode` adds that the
envelope's device id must be the topic's, so no device can speak for another.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Self
from uuid import uuid4

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import from_json

from edge_agent.protocol.errors import (
    MalformedMessage,
    OversizedMessage,
    UnsupportedVersion,
    WrongTopic,
    describe,
    shown,
)
from edge_agent.protocol.fields import ModelName, ReleaseVersion, Sha256Hex
from edge_agent.protocol.telemetry import TelemetryReport
from edge_agent.protocol.topics import (
    TELEMETRY_TOPIC,
    DeviceTopic,
    check_name,
    device_topic,
    group_topic,
    parse_device_topic,
)

SCHEMA_VERSION = 1
# Checked by the sender too: Mosquitto disconnects a client over its limit, and paho then
# resends the same message forever.
MAX_MESSAGE_BYTES = 64 << 10
# What a broker must accept to carry that: room for the MQTT header, topic and properties
# around the largest payload. Both of the hub's brokers enforce it, and MQTT 5 clients learn
# it from the CONNACK.
MAX_PACKET_BYTES = MAX_MESSAGE_BYTES + (4 << 10)
MAX_ERROR_CHARS = 2000
# Real messages nest about six deep; the bound keeps every accepted message re-encodable.
MAX_NESTING = 32


class Wire(BaseModel):
    """Base of every wire model: unknown fields kept, instances immutable."""

    model_config = ConfigDict(extra="allow", frozen=True)


def _utc(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise ValueError("must carry a time zone (UTC)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


# What str(UUID(value)) == value with version 4 accepts (the version nibble 4, the RFC 4122
# variant 8-b), as one regex: a fifth of the cost of parsing, on every received message.
_CANONICAL_UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)


def _uuid4(value: str) -> str:
    # Canonical text only: de-duplication compares ids as strings.
    if _CANONICAL_UUID4.fullmatch(value) is None:
        raise ValueError("must be a UUID4 in canonical form (lowercase, with hyphens)")
    return value


def _group_name(value: str) -> str:
    return check_name(value, "group name")


UtcDateTime = Annotated[datetime, AfterValidator(_utc)]
DeviceId = Annotated[str, AfterValidator(check_name)]
GroupName = Annotated[str, AfterValidator(_group_name)]
ErrorText = Annotated[str, Field(max_length=MAX_ERROR_CHARS)]


class UpdatePhase(StrEnum):
    """Phases of the agent's update state machine (edge_agent.updates.machine uses these)."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    ACTIVATING = "activating"
    HEALTH_CHECK = "health_check"
    ROLLING_BACK = "rolling_back"


class UpdateEvent(StrEnum):
    """Events of the agent's update state machine (edge_agent.updates.machine uses these)."""

    START = "start"
    DOWNLOADED = "downloaded"
    INSTALLED = "installed"
    ACTIVATED = "activated"
    HEALTHY = "healthy"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class UpdateResult(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class ModelReport(Wire):
    active: ReleaseVersion | None = None  # serving now
    previous: ReleaseVersion | None = None  # kept for rollback
    pending: ReleaseVersion | None = None  # being installed
    phase: UpdatePhase = UpdatePhase.IDLE
    last_result: UpdateResult | None = None
    last_error: ErrorText | None = None
    floor: ReleaseVersion | None = None  # nothing older installs (the persisted version floor)
    # `pending` is downloaded and waits for the maintenance window, which opens then.
    activates_at: UtcDateTime | None = None
    # Why the device's user holds this release back (a pinned or deferred agent update).
    held: ErrorText | None = None


class ReportedState(Wire):
    """What a device runs. Operational state only: no usage ever travels here."""

    agent_version: ReleaseVersion
    models: dict[ModelName, ModelReport] = Field(default_factory=dict)
    desired_sequence: int = Field(default=0, ge=0)  # the last desired state accepted


class InstallEvent(Wire):
    model: ModelName
    version: ReleaseVersion
    event: UpdateEvent
    from_version: ReleaseVersion | None = None
    attempt: int = Field(default=1, ge=1)
    error: ErrorText | None = None


class Heartbeat(Wire):
    uptime_seconds: int = Field(ge=0)
    outbox_depth: int = Field(default=0, ge=0)
    telemetry_dropped: int = Field(default=0, ge=0)  # dropped because the outbox was full


class Announcement(Wire):
    """Tells a group to refresh its update metadata now. A hint, not a command: the agent
    acts only on what TUF and its signed desired state say."""

    group: GroupName
    targets_version: int | None = Field(default=None, ge=1)


class SignedDesired(Wire):
    """Desired state as it travels: the signed part as sent, verified by `verify_desired`
    before anything reads it (which is why it stays an untyped object here)."""

    signed: dict[str, Any]
    key_id: Sha256Hex
    signature: str = Field(max_length=128)


class MessageKind(StrEnum):
    DESIRED = "desired"
    REPORTED_STATE = "reported_state"
    HEARTBEAT = "heartbeat"
    INSTALL_EVENT = "install_event"
    ANNOUNCEMENT = "announcement"
    TELEMETRY = "telemetry"


Payload = SignedDesired | ReportedState | Heartbeat | InstallEvent | Announcement | TelemetryReport

PAYLOAD_TYPES: dict[MessageKind, type[Payload]] = {
    MessageKind.DESIRED: SignedDesired,
    MessageKind.REPORTED_STATE: ReportedState,
    MessageKind.HEARTBEAT: Heartbeat,
    MessageKind.INSTALL_EVENT: InstallEvent,
    MessageKind.ANNOUNCEMENT: Announcement,
    MessageKind.TELEMETRY: TelemetryReport,
}
_KIND_OF = {payload_type: kind for kind, payload_type in PAYLOAD_TYPES.items()}

# Kinds that travel on a device's own topics, and which one. The rest name no device.
DEVICE_TOPIC_OF: dict[MessageKind, DeviceTopic] = {
    MessageKind.DESIRED: DeviceTopic.DESIRED,
    MessageKind.REPORTED_STATE: DeviceTopic.REPORTED,
    MessageKind.HEARTBEAT: DeviceTopic.REPORTED,
    MessageKind.INSTALL_EVENT: DeviceTopic.EVENTS,
}


class Envelope(Wire):
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    message_id: Annotated[str, AfterValidator(_uuid4)]  # the same on every retry
    kind: MessageKind
    # When the sender made the message; it may wait in the outbox for days before it travels.
    sent_at: UtcDateTime
    device_id: DeviceId | None = None
    payload: Payload

    @classmethod
    def of(
        cls, payload: Payload, *, device_id: str | None = None, sent_at: datetime | None = None
    ) -> Self:
        """A new message around `payload`, with a fresh id."""
        return cls(
            message_id=str(uuid4()),
            kind=_KIND_OF[type(payload)],
            sent_at=sent_at if sent_at is not None else datetime.now(UTC),
            device_id=device_id,
            payload=payload,
        )

    @field_validator("payload", mode="before")
    @classmethod
    def _payload_of_its_kind(cls, value: Any, info: ValidationInfo) -> Any:
        # The kind picks the payload type; guessing it from the fields could pick wrongly.
        kind = info.data.get("kind")
        if kind is None:
            raise ValueError("cannot be read without a valid kind")
        expected = PAYLOAD_TYPES[kind]
        if isinstance(value, BaseModel) and not isinstance(value, expected):
            raise ValueError(f"a {kind} message carries {expected.__name__}")
        return value if isinstance(value, expected) else expected.model_validate(value)

    @model_validator(mode="after")
    def _device_named_where_needed(self) -> Self:
        if self.kind in DEVICE_TOPIC_OF and self.device_id is None:
            raise ValueError(f"device_id: a {self.kind} message must name its device")
        if self.kind not in DEVICE_TOPIC_OF and self.device_id is not None:
            raise ValueError(f"device_id: a {self.kind} message must not name a device")
        # The envelope keeps unknown fields for other kinds; on telemetry they would be an
        # unchecked channel next to the closed report.
        if self.kind is MessageKind.TELEMETRY and self.model_extra:
            raise ValueError(
                f"a telemetry message carries no fields beyond the envelope's: "
                f"{', '.join(sorted(self.model_extra))}"
            )
        return self


def topic_for(envelope: Envelope) -> str:
    """The one topic a message belongs on."""
    device_kind = DEVICE_TOPIC_OF.get(envelope.kind)
    # The envelope's validator makes sure that device kinds name their device.
    if device_kind is not None and envelope.device_id is not None:
        return device_topic(envelope.device_id, device_kind)
    if isinstance(envelope.payload, Announcement):
        return group_topic(envelope.payload.group)
    if isinstance(envelope.payload, TelemetryReport):
        return TELEMETRY_TOPIC
    raise AssertionError(f"no topic for {envelope.kind}")  # pragma: no cover


def encode(envelope: Envelope) -> bytes:
    data = envelope.model_dump_json().encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise OversizedMessage(
            f"{envelope.kind} message is {len(data)} bytes, over the limit of "
            f"{MAX_MESSAGE_BYTES}; it would be dropped by the broker"
        )
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nesting(value: Any) -> int:
    """How deep lists and objects nest in `value`; counting stops past MAX_NESTING."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_NESTING:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list) and item:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _parse(topic: str, data: bytes) -> Any:
    """`data` as JSON. pydantic-core's parser first: twice as fast as the standard library's.
    Where it refuses, the standard library's decides and words the error, as it always did:
    it also reads UTF-16/32, a byte order mark and lone surrogates (each parser refuses
    NaN and Infinity; they agree on every input both accept)."""
    try:
        return from_json(data, allow_inf_nan=False)
    except ValueError:
        pass
    try:
        return json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"message on {shown(topic)} is not JSON: {exc}") from None


def _may_nest_too_deep(data: bytes) -> bool:
    """False when `data` cannot nest deeper than MAX_NESTING: it opens no more lists and
    objects than that (brackets inside strings only over-count; in UTF-16/32 too, every "["
    and "{" holds its ASCII byte). Counting bytes costs under a microsecond, walking the
    parsed message up to 15: real messages open about ten, so the walk runs only for others."""
    return data.count(b"[") + data.count(b"{") > MAX_NESTING


def decode(topic: str, data: bytes) -> Envelope:
    """The message in `data`, received on `topic`; MessageError if it is not acceptable."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise OversizedMessage(
            f"message on {shown(topic)} is {len(data)} bytes, over the limit of {MAX_MESSAGE_BYTES}"
        )
    raw = _parse(topic, data)
    if not isinstance(raw, dict):
        raise MalformedMessage(f"message on {shown(topic)} is not a JSON object")
    if _may_nest_too_deep(data) and _nesting(raw) > MAX_NESTING:
        raise MalformedMessage(f"message on {shown(topic)} nests deeper than {MAX_NESTING} levels")
    version = raw.get("schema_version")
    if type(version) is not int:
        raise MalformedMessage(
            f"message on {shown(topic)}: schema_version is missing or not an integer"
        )
    if version > SCHEMA_VERSION:
        raise UnsupportedVersion(
            f"message on {shown(topic)} has schema version {version}; this side understands "
            f"up to {SCHEMA_VERSION} (update it)"
        )
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise MalformedMessage(f"message on {shown(topic)}: {describe(exc)}") from None
    _check_topic(topic, envelope)
    return envelope


def _check_topic(topic: str, envelope: Envelope) -> None:
    expected = topic_for(envelope)
    if topic == expected:
        return
    if envelope.kind in DEVICE_TOPIC_OF:
        device_id, _kind = parse_device_topic(topic)
        if device_id != envelope.device_id:
            raise WrongTopic(
                f"a message from device {shown(envelope.device_id or '')} arrived on the topic "
                f"of device {shown(device_id)}: a device may speak only for itself"
            )
    raise WrongTopic(f"a {envelope.kind} message belongs on {expected}, not {shown(topic)}")
