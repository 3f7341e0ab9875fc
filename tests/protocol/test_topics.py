"""Topics name one device or group each, and nothing a wildcard could widen."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.protocol import (
    HUB_INGEST_FILTERS,
    TELEMETRY_TOPIC,
    DeviceTopic,
    WrongTopic,
    broker_acl,
    device_acl_patterns,
    device_subscriptions,
    device_topic,
    group_topic,
    parse_device_topic,
    parse_group_topic,
)

BAD_NAMES = ["", "+", "#", "a/b", "a+", "a#", "..", ".hidden", "-x", "a\x00b", "a\n", "é", "x" * 65]


@pytest.mark.parametrize("kind", list(DeviceTopic))
def test_device_topics_round_trip(kind: DeviceTopic) -> None:
    topic = device_topic("dev-1.lab_A", kind)
    assert topic == f"edge/v1/devices/dev-1.lab_A/{kind}"
    assert parse_device_topic(topic) == ("dev-1.lab_A", kind)


def test_group_topic_round_trips() -> None:
    assert group_topic("lab") == "edge/v1/groups/lab/announce"
    assert parse_group_topic("edge/v1/groups/lab/announce") == "lab"


def test_telemetry_topic_names_no_device() -> None:
    assert TELEMETRY_TOPIC == "edge/v1/telemetry"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_with_wildcards_separators_or_traversal_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="device id"):
        device_topic(name, DeviceTopic.REPORTED)
    with pytest.raises(ValueError, match="group name"):
        group_topic(name)


@pytest.mark.parametrize(
    "topic",
    [
        "edge/v1/devices/+/reported",
        "edge/v1/devices/#",
        "edge/v1/devices/dev-1/reported/extra",
        "edge/v1/devices/dev-1",
        "edge/v1/devices//reported",
        "edge/v1/devices/../reported",
        "edge/v1/devices/dev-1/status",
        "edge/v2/devices/dev-1/reported",
        "/edge/v1/devices/dev-1/reported",
        "edge/v1/telemetry",
        "",
    ],
)
def test_parse_device_topic_refuses_anything_else(topic: str) -> None:
    with pytest.raises(WrongTopic):
        parse_device_topic(topic)


@pytest.mark.parametrize(
    "topic", ["edge/v1/groups/+/announce", "edge/v1/groups/lab", "edge/v1/groups/lab/other"]
)
def test_parse_group_topic_refuses_anything_else(topic: str) -> None:
    with pytest.raises(WrongTopic):
        parse_group_topic(topic)


@given(st.text(max_size=120))
def test_parsing_any_text_returns_a_round_trip_or_refuses(topic: str) -> None:
    try:
        device_id, kind = parse_device_topic(topic)
    except WrongTopic:
        return
    assert device_topic(device_id, kind) == topic


@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True), st.sampled_from(DeviceTopic)
)
def test_every_valid_name_round_trips(device_id: str, kind: DeviceTopic) -> None:
    assert parse_device_topic(device_topic(device_id, kind)) == (device_id, kind)


def test_hub_shares_the_device_to_hub_topics() -> None:
    assert HUB_INGEST_FILTERS == (
        "$share/hub-ingest/edge/v1/devices/+/reported",
        "$share/hub-ingest/edge/v1/devices/+/events",
        "$share/hub-ingest/edge/v1/telemetry",
    )


def test_a_device_subscribes_to_its_desired_state_and_its_groups() -> None:
    assert device_subscriptions("dev-1", ["lab"]) == [
        "edge/v1/devices/dev-1/desired",
        "edge/v1/groups/lab/announce",
    ]


def test_device_acl_patterns_fence_each_device_in() -> None:
    assert device_acl_patterns() == [
        "pattern write edge/v1/devices/%u/reported",
        "pattern write edge/v1/devices/%u/events",
        "pattern write edge/v1/telemetry",
        "pattern read edge/v1/devices/%u/desired",
    ]


def test_broker_acl_adds_the_hub_and_each_devices_groups() -> None:
    lines = broker_acl({"dev-2": ["lab", "all", "lab"], "dev-1": [], "dev-3": ["all"]})
    assert lines[1:5] == device_acl_patterns()
    assert lines[5:] == [
        "",
        "user _hub",
        "topic readwrite edge/v1/#",
        "",
        "user _hub-ingest",
        "topic readwrite edge/v1/#",
        "",
        "user _hub-director",
        "topic readwrite edge/v1/#",
        "",
        "user dev-2",
        "topic read edge/v1/groups/all/announce",
        "topic read edge/v1/groups/lab/announce",
        "",
        "user dev-3",
        "topic read edge/v1/groups/all/announce",
    ]


@pytest.mark.parametrize("user", ["hub", "dev-1", "_", "_a/b", "_+"])
def test_a_hub_identity_can_never_be_a_device_id(user: str) -> None:
    with pytest.raises(ValueError, match="hub identity"):
        broker_acl({}, hub_users=[user])


def test_broker_acl_refuses_a_bad_device_or_group() -> None:
    with pytest.raises(ValueError, match="device id"):
        broker_acl({"a/#": ["lab"]})
    with pytest.raises(ValueError, match="group name"):
        broker_acl({"dev-1": ["+"]})
