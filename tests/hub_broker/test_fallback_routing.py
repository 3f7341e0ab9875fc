"""The fallback broker's routing, without sockets: sessions, QoS 1 queues and redelivery,
shared subscriptions, retained messages."""

from __future__ import annotations

import time

import pytest

from hub.broker.fallback.routing import Message, Router, Subscription

Sent = list[tuple[int | None, Message, bool]]


def attach(router: Router, client_id: str, *, receive_max: int = 65535) -> Sent:
    sent: Sent = []
    router.sessions[client_id].attach(
        lambda pid, message, dup: sent.append((pid, message, dup)), receive_max
    )
    return sent


def connect(router: Router, client_id: str, *, expiry_s: int = 3600, clean: bool = False) -> Sent:
    router.open_session(client_id, clean_start=clean, expiry_s=expiry_s)
    return attach(router, client_id)


def report(n: int) -> Message:
    return Message("edge/v1/device/dev-a/reported", str(n).encode(), 1)


def test_unacknowledged_messages_come_again_as_duplicates_then_the_queue() -> None:
    router = Router()
    sent = connect(router, "hub")
    router.subscribe("hub", Subscription("edge/v1/device/+/reported", 1))
    router.publish(report(1))
    router.close_session("hub")
    router.publish(report(2))  # queued while away
    assert router.open_session("hub", clean_start=False, expiry_s=3600)  # session present
    again = attach(router, "hub")
    assert [(m.payload, dup) for _, m, dup in again] == [(b"1", True), (b"2", False)]
    assert again[0][0] == sent[0][0]  # the same packet id, as MQTT 5 requires
    for packet_id, _, _ in again:
        assert router.sessions["hub"].acknowledged(packet_id)
    assert router.sessions["hub"].queued == 0


def test_receive_maximum_holds_back_what_the_client_cannot_take_yet() -> None:
    router = Router()
    router.open_session("hub", clean_start=True, expiry_s=60)
    sent = attach(router, "hub", receive_max=2)
    router.subscribe("hub", Subscription("edge/#", 1))
    for n in range(5):
        router.publish(report(n))
    assert len(sent) == 2
    router.sessions["hub"].acknowledged(sent[0][0] or 0)
    assert [m.payload for _, m, _ in sent] == [b"0", b"1", b"2"]


def test_clean_start_and_zero_expiry_forget_the_session() -> None:
    router = Router()
    connect(router, "dev", expiry_s=0)
    router.subscribe("dev", Subscription("a/#", 1))
    router.close_session("dev")
    assert "dev" not in router.sessions
    connect(router, "dev")
    router.subscribe("dev", Subscription("a/#", 1))
    router.close_session("dev")
    assert not router.open_session("dev", clean_start=True, expiry_s=60)
    assert router.sessions["dev"].subscriptions == {}


def test_sessions_expire_after_their_interval() -> None:
    router = Router()
    connect(router, "dev", expiry_s=5)
    router.close_session("dev")
    assert router.expire(time.monotonic() + 1) == 0
    assert router.expire(time.monotonic() + 6) == 1
    assert "dev" not in router.sessions


def test_an_expired_session_does_not_resume_before_the_sweep() -> None:
    router = Router()
    connect(router, "dev", expiry_s=5)
    router.subscribe("dev", Subscription("a/#", 1))
    router.close_session("dev")
    session = router.sessions["dev"]
    assert session.disconnected_at is not None
    session.disconnected_at -= 6  # gone longer than its expiry
    assert not router.open_session("dev", clean_start=False, expiry_s=5)
    assert router.sessions["dev"].subscriptions == {}


def test_shared_subscription_takes_turns_and_prefers_connected_members() -> None:
    router = Router()
    one, two = connect(router, "ingest-1"), connect(router, "ingest-2")
    shared = Subscription.parse("$share/ingest/edge/v1/device/+/reported", 1)
    for client in ("ingest-1", "ingest-2"):
        router.subscribe(client, shared)
    for n in range(4):
        assert router.publish(report(n)) == 1
    assert [m.payload for _, m, _ in one] == [b"0", b"2"]
    assert [m.payload for _, m, _ in two] == [b"1", b"3"]
    for packet_id, _, _ in two:
        router.sessions["ingest-2"].acknowledged(packet_id or 0)
    router.close_session("ingest-2")  # persistent: it stays a member, but is away
    for n in range(4, 7):
        router.publish(report(n))
    assert [m.payload for _, m, _ in one][2:] == [b"4", b"5", b"6"]
    assert router.sessions["ingest-2"].queued == 0


def test_a_shared_group_with_no_one_connected_queues_for_a_member() -> None:
    router = Router()
    connect(router, "ingest-1")
    router.subscribe("ingest-1", Subscription.parse("$share/ingest/edge/#", 1))
    router.close_session("ingest-1")
    router.publish(report(1))
    assert router.sessions["ingest-1"].queued == 1


def test_retained_message_reaches_new_subscribers_and_an_empty_one_clears_it() -> None:
    router = Router()
    desired = Message("edge/v1/device/dev-a/desired", b"state", 1, retain=True)
    assert router.publish(desired) == 0
    connect(router, "dev-a")
    got = router.subscribe("dev-a", Subscription("edge/v1/device/dev-a/desired", 1))
    assert [(m.payload, m.retain) for m in got] == [(b"state", True)]
    connect(router, "hub")  # shared subscriptions get no retained messages (MQTT 5, 4.8.2)
    assert router.subscribe("hub", Subscription.parse("$share/g/edge/#", 1)) == []
    router.publish(Message(desired.topic, b"", 1, retain=True))
    assert router.retained == {}


def test_forwarded_retain_flag_follows_retain_as_published() -> None:
    router = Router()
    plain, kept = connect(router, "plain"), connect(router, "kept")
    router.subscribe("plain", Subscription("t", 1))
    router.subscribe("kept", Subscription("t", 1, retain_as_published=True))
    router.publish(Message("t", b"x", 1, retain=True))
    assert plain[0][1].retain is False and kept[0][1].retain is True


def test_qos_is_the_lower_of_publish_and_subscription_and_qos0_is_not_queued() -> None:
    router = Router()
    sent = connect(router, "dev")
    router.subscribe("dev", Subscription("t", 0))
    router.publish(Message("t", b"x", 1))
    assert sent == [(None, Message("t", b"x", 0), False)]
    router.close_session("dev")
    router.publish(Message("t", b"y", 1))
    assert router.sessions["dev"].queued == 0


def test_no_local_and_dollar_topics() -> None:
    router = Router()
    sent = connect(router, "dev")
    router.subscribe("dev", Subscription("#", 1, no_local=True))
    router.publish(Message("t", b"mine", 1), sender="dev")
    router.publish(Message("$SYS/x", b"sys", 1))
    assert sent == []
    router.publish(Message("t", b"theirs", 1), sender="other")
    assert [m.payload for _, m, _ in sent] == [b"theirs"]


def test_a_full_queue_drops_and_counts() -> None:
    router = Router(max_queued=3)
    connect(router, "hub")
    router.subscribe("hub", Subscription("edge/#", 1))
    router.close_session("hub")
    for n in range(5):
        router.publish(report(n))
    session = router.sessions["hub"]
    assert session.queued == 3 and session.dropped == 2


@pytest.mark.parametrize("pattern", ["$share//t", "$share/g", "$share/g+/t", "$share/g/"])
def test_malformed_shared_filters_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="malformed shared subscription"):
        Subscription.parse(pattern, 1)
