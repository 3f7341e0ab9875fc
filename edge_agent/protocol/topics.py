"""MQTT topics of the fleet, for both sides, and the broker ACL that fences each device in.

    edge/v1/devices/<device>/desired     hub -> device, retained: signed desired state
    edge/v1/devices/<device>/reported    device -> hub: reported state, heartbeats
    edge/v1/devices/<device>/events      device -> hub: install events
    edge/v1/groups/<group>/announce      hub -> devices of a group: "metadata changed"
    edge/v1/telemetry                    devices -> hub: anonymous, names no device

A device's MQTT username is its device id (the broker takes it from the client
certificate's CN), so one `%u` pattern per topic gives every device its own topics and
nobody else's. Device ids and group names are checked against one strict pattern: no
wildcard, separator or NUL can reach a topic or an ACL line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum

from edge_agent.protocol.errors import WrongTopic, shown

ROOT = "edge/v1"
TELEMETRY_TOPIC = f"{ROOT}/telemetry"
HUB_SHARE_GROUP = "hub-ingest"
# A hub identity starts with "_", which no device id may, so no device certificate can
# ever carry the hub's rights. The managed broker makes a certificate's CN the client id,
# so each hub client has its own certificate: `_hub` for tools and tests, one per role.
HUB_USERNAME = "_hub"
HUB_INGEST_CLIENT = "_hub-ingest"
HUB_DIRECTOR_CLIENT = "_hub-director"
HUB_CLIENTS = (HUB_USERNAME, HUB_INGEST_CLIENT, HUB_DIRECTOR_CLIENT)

NAME_MAX_CHARS = 64
_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX_CHARS - 1}}}$")
_DEVICES = f"{ROOT}/devices/"
_GROUPS = f"{ROOT}/groups/"
_ANNOUNCE = "announce"


class DeviceTopic(StrEnum):
    DESIRED = "desired"
    REPORTED = "reported"
    EVENTS = "events"


def is_valid_name(value: str) -> bool:
    # fullmatch: `$` alone would accept a trailing newline.
    return _NAME.fullmatch(value) is not None


def check_name(value: str, what: str = "device id") -> str:
    """`value` if it may name a device or group; ValueError naming the rule otherwise."""
    if not is_valid_name(value):
        raise ValueError(
            f"{what} {shown(value)} must be 1-{NAME_MAX_CHARS} of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return value


def device_topic(device_id: str, kind: DeviceTopic) -> str:
    return f"{_DEVICES}{check_name(device_id)}/{DeviceTopic(kind)}"


def group_topic(group: str) -> str:
    return f"{_GROUPS}{check_name(group, 'group name')}/{_ANNOUNCE}"


def parse_device_topic(topic: str) -> tuple[str, DeviceTopic]:
    """(device id, kind) of a device topic; WrongTopic for anything else."""
    rest = topic.removeprefix(_DEVICES)
    parts = rest.split("/")
    if rest == topic or len(parts) != 2:
        raise WrongTopic(
            f"{shown(topic)} is not a device topic ({_DEVICES}<device>/<desired|reported|events>)"
        )
    device_id, kind = parts
    if not is_valid_name(device_id):
        raise WrongTopic(f"{shown(topic)} names no valid device id")
    try:
        return device_id, DeviceTopic(kind)
    except ValueError:
        raise WrongTopic(
            f"{shown(topic)} ends in {shown(kind)}, not desired|reported|events"
        ) from None


def parse_group_topic(topic: str) -> str:
    """The group named by an announcement topic; WrongTopic for anything else."""
    rest = topic.removeprefix(_GROUPS)
    parts = rest.split("/")
    if rest == topic or len(parts) != 2 or parts[1] != _ANNOUNCE or not is_valid_name(parts[0]):
        raise WrongTopic(f"{shown(topic)} is not a group topic ({_GROUPS}<group>/{_ANNOUNCE})")
    return parts[0]


def shared(topic_filter: str, group: str = HUB_SHARE_GROUP) -> str:
    """An MQTT 5 shared subscription: each message goes to one member of `group`."""
    return f"$share/{check_name(group, 'share group')}/{topic_filter}"


# What devices send to the hub.
HUB_INGEST_TOPICS = (
    f"{_DEVICES}+/{DeviceTopic.REPORTED}",
    f"{_DEVICES}+/{DeviceTopic.EVENTS}",
    TELEMETRY_TOPIC,
)
# What the hub's ingest workers subscribe to on a scale-out broker; several workers split
# the stream. Only on a broker that refuses `$share` subscriptions from devices: Mosquitto
# 2.0 grants them, and a device in the group swallows its turn of the messages (its read
# ACL drops them). The managed Mosquitto's one ingest worker subscribes HUB_INGEST_TOPICS.
HUB_INGEST_FILTERS = tuple(shared(topic) for topic in HUB_INGEST_TOPICS)


def device_subscriptions(device_id: str, groups: Iterable[str] = ()) -> list[str]:
    """What a device subscribes to: its desired state and its groups' announcements."""
    return [device_topic(device_id, DeviceTopic.DESIRED), *(group_topic(g) for g in groups)]


def device_acl_patterns() -> list[str]:
    """Mosquitto `pattern` lines: each device writes only its own reported state, events and
    the shared telemetry topic, and reads only its own desired state."""
    own = f"{_DEVICES}%u"
    return [
        f"pattern write {own}/{DeviceTopic.REPORTED}",
        f"pattern write {own}/{DeviceTopic.EVENTS}",
        f"pattern write {TELEMETRY_TOPIC}",
        f"pattern read {own}/{DeviceTopic.DESIRED}",
    ]


def broker_acl(
    device_groups: Mapping[str, Iterable[str]], hub_users: Iterable[str] = HUB_CLIENTS
) -> list[str]:
    """The lines of a Mosquitto `acl_file`: the device patterns, the hub's users, and per
    device the announcement topics of its groups (membership is not something a `%u`
    pattern can express). Regenerate and reload the broker when groups change."""
    lines = ["# devices: %u is the device id from the client certificate", *device_acl_patterns()]
    for user in hub_users:
        if not user.startswith("_") or not is_valid_name(user[1:]):
            raise ValueError(f"hub identity {shown(user)} must be _<name>, never a device id")
        lines += ["", f"user {user}", f"topic readwrite {ROOT}/#"]
    for device_id, groups in sorted(device_groups.items()):
        reads = sorted({f"topic read {group_topic(g)}" for g in groups})
        if reads:
            lines += ["", f"user {check_name(device_id)}", *reads]
    return lines
