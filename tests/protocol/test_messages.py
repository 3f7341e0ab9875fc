"""Messages survive a round trip, keep what they do not know, and refuse the rest clearly."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.protocol import (
    MAX_MESSAGE_BYTES,
    Announcement,
    Envelope,
    Heartbeat,
    InstallEvent,
    MalformedMessage,
    MessageError,
    ModelReport,
    OversizedMessage,
    ReportedState,
    UnsupportedVersion,
    UpdateEvent,
    UpdatePhase,
    UpdateResult,
    WrongTopic,
    decode,
    encode,
    topic_for,
)
from edge_agent.updates import machine

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
REPORTED = "edge/v1/devices/dev-1/reported"


def report() -> Envelope:
    state = ReportedState(
        agent_version="0.1.0",
        models={
            "tiny": ModelReport(
                active="1.1.0",
                previous="1.0.0",
                pending="1.2.0",
                phase=UpdatePhase.DOWNLOADING,
                last_result=UpdateResult.ROLLED_BACK,
                last_error="health check: no tokens",
                floor="1.0.0",
            )
        },
        desired_sequence=7,
    )
    return Envelope.of(state, device_id="dev-1", sent_at=NOW)


def as_dict(envelope: Envelope) -> dict[str, Any]:
    return dict(json.loads(encode(envelope)))


def as_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("envelope", "topic"),
    [
        (report(), REPORTED),
        (Envelope.of(Heartbeat(uptime_seconds=5), device_id="dev-1"), REPORTED),
        (
            Envelope.of(
                InstallEvent(model="tiny", version="1.2.0", event=UpdateEvent.FAILED, error="x"),
                device_id="dev-1",
            ),
            "edge/v1/devices/dev-1/events",
        ),
        (Envelope.of(Announcement(group="lab", targets_version=3)), "edge/v1/groups/lab/announce"),
    ],
)
def test_round_trip(envelope: Envelope, topic: str) -> None:
    assert topic_for(envelope) == topic
    assert decode(topic, encode(envelope)) == envelope


def test_envelope_of_fills_a_fresh_uuid4_and_utc_time() -> None:
    one, two = (Envelope.of(Heartbeat(uptime_seconds=1), device_id="dev-1") for _ in range(2))
    assert one.message_id != two.message_id
    assert one.sent_at.tzinfo is UTC


def test_unknown_fields_survive_at_every_level() -> None:
    data = as_dict(report())
    data["routing_hint"] = "future"
    data["payload"]["battery"] = {"percent": 80}
    data["payload"]["models"]["tiny"]["npu"] = True
    envelope = decode(REPORTED, as_bytes(data))
    again = json.loads(encode(envelope))
    assert again["routing_hint"] == "future"
    assert again["payload"]["battery"] == {"percent": 80}
    assert again["payload"]["models"]["tiny"]["npu"] is True


def test_oversized_is_refused_by_the_sender() -> None:
    big = InstallEvent(model="tiny", version="1.0.0", event=UpdateEvent.FAILED, padding="x" * 70000)
    with pytest.raises(OversizedMessage, match=f"over the limit of {MAX_MESSAGE_BYTES}"):
        encode(Envelope.of(big, device_id="dev-1"))


def test_oversized_is_refused_by_the_receiver_before_parsing() -> None:
    with pytest.raises(OversizedMessage, match="65537 bytes"):
        decode(REPORTED, b"{" + b" " * MAX_MESSAGE_BYTES)


def test_a_device_cannot_speak_for_another() -> None:
    with pytest.raises(
        WrongTopic, match="from device 'dev-1' arrived on the topic of device 'dev-2'"
    ):
        decode("edge/v1/devices/dev-2/reported", encode(report()))


@pytest.mark.parametrize(
    "topic",
    [
        "edge/v1/devices/dev-1/events",
        "edge/v1/devices/dev-1/desired",
        "edge/v1/telemetry",
        "edge/v1/groups/lab/announce",
        "elsewhere",
    ],
)
def test_a_message_on_another_kinds_topic_is_refused(topic: str) -> None:
    with pytest.raises(WrongTopic):
        decode(topic, encode(report()))


def test_an_announcement_on_another_groups_topic_is_refused() -> None:
    data = encode(Envelope.of(Announcement(group="lab")))
    with pytest.raises(WrongTopic, match="belongs on edge/v1/groups/lab/announce"):
        decode("edge/v1/groups/all/announce", data)


def test_newer_major_version_is_refused_clearly() -> None:
    data = as_dict(report()) | {"schema_version": 2, "payload": {"reshaped": True}}
    with pytest.raises(UnsupportedVersion, match="schema version 2; this side understands up to 1"):
        decode(REPORTED, as_bytes(data))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"schema_version": "1"}, "schema_version is missing or not an integer"),
        ({"schema_version": 0}, "schema_version: Input should be greater than or equal to 1"),
        ({"message_id": "not-a-uuid"}, "message_id: Value error, must be a UUID4"),
        ({"message_id": "00000000-0000-1000-8000-000000000000"}, "must be a UUID4"),
        ({"message_id": "{12345678-1234-4234-8234-123456789abc}"}, "canonical form"),
        ({"kind": "gossip"}, "kind: Input should be"),
        ({"sent_at": "2030-01-02T03:04:05"}, "sent_at: Value error, must carry a time zone"),
        ({"sent_at": "9999-12-31T23:59:59-12:00"}, "sent_at: Value error, is out of range"),
        ({"device_id": "dev/+"}, "device_id: Value error, device id"),
        ({"device_id": None}, "a reported_state message must name its device"),
        ({"payload": {"agent_version": "1.0", "models": {"../x": {}}}}, "payload.models.../x"),
        ({"payload": {"agent_version": "1.0", "desired_sequence": -1}}, "desired_sequence"),
        ({"payload": "text"}, "payload: Input should be a valid dictionary"),
        ({"kind": "heartbeat", "payload": {}}, "payload.uptime_seconds: Field required"),
    ],
)
def test_malformed_messages_name_the_field(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(MalformedMessage, match=re.escape(problem)):
        decode(REPORTED, as_bytes(as_dict(report()) | change))


def test_deep_nesting_is_refused_so_every_accepted_message_can_be_sent_on() -> None:
    data = as_dict(report()) | {"deep": json.loads("[" * 200 + "]" * 200)}
    with pytest.raises(MalformedMessage, match="nests deeper than 32 levels"):
        decode(REPORTED, as_bytes(data))
    shallow = decode(REPORTED, as_bytes(as_dict(report()) | {"deep": [[[[1]]]]}))
    assert decode(REPORTED, encode(shallow)) == shallow


def test_an_announcement_must_not_name_a_device() -> None:
    data = as_dict(Envelope.of(Announcement(group="lab"))) | {"device_id": "dev-1"}
    with pytest.raises(MalformedMessage, match="must not name a device"):
        decode("edge/v1/groups/lab/announce", as_bytes(data))


def test_a_payload_of_another_kind_is_refused_when_building() -> None:
    with pytest.raises(ValueError, match="a heartbeat message carries Heartbeat"):
        Envelope(
            message_id="12345678-1234-4234-8234-123456789abc",
            kind="heartbeat",
            sent_at=NOW,
            device_id="dev-1",
            payload=Announcement(group="lab"),
        )


@pytest.mark.parametrize(
    "data", [b"", b"\xff\xfe\x00", b"[1]", b"NaN", b'{"schema_version": NaN}', b"[" * 5000]
)
def test_what_is_not_a_json_object_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(REPORTED, data)


def test_the_update_machine_speaks_the_protocol_enums() -> None:
    assert machine.Event is UpdateEvent
    assert machine.Phase is UpdatePhase


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    *("schema_version", "message_id", "kind", "sent_at", "device_id", "payload"),
    *("payload.models", "payload.agent_version", "payload.extra"),
]


@given(st.text(max_size=60), st.binary(max_size=300))
def test_decode_of_any_bytes_raises_only_message_errors(topic: str, data: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode(topic, data)


@given(
    st.sampled_from(FIELDS),
    JSON,
    st.sampled_from([REPORTED, "edge/v1/devices/dev-2/reported", "edge/v1/telemetry"]),
)
def test_decode_of_any_mutated_message_raises_only_message_errors(
    field: str, value: Any, topic: str
) -> None:
    data = as_dict(report())
    target = data
    *parents, leaf = field.split(".")
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    try:
        envelope = decode(topic, as_bytes(data))
    except MessageError:
        return
    assert decode(topic, encode(envelope)) == envelope
