"""The durable outbox: FIFO, idempotent, deleted only on ack, bounded by dropping the oldest
telemetry (never state), refusing bad input, surviving kill -9, safe across threads."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.sync import (
    MAX_PAYLOAD_BYTES,
    InvalidMessage,
    MessageIdConflict,
    Outbox,
    OutboxClosed,
    OutboxFull,
    OutboxKind,
    OutboxUnusable,
    PayloadTooLarge,
)

STATE = OutboxKind.STATE
EVENT = OutboxKind.EVENT
TELEMETRY = OutboxKind.TELEMETRY


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.db")


def ids(outbox: Outbox) -> list[str]:
    return [item.message_id for item in outbox.pending(limit=10_000)]


def test_pending_is_first_in_first_out(outbox: Outbox) -> None:
    kinds = [STATE, TELEMETRY, EVENT, TELEMETRY, STATE]
    for n, kind in enumerate(kinds):
        outbox.put(f"devices/d1/{kind}", f"payload {n}".encode(), kind, f"m{n}")

    items = outbox.pending(limit=10)
    assert [i.message_id for i in items] == ["m0", "m1", "m2", "m3", "m4"]
    assert [i.kind for i in items] == kinds
    assert items[2].topic == "devices/d1/event"
    assert items[2].payload == b"payload 2"
    assert all(i.attempts == 0 for i in items)
    assert [i.message_id for i in outbox.pending(limit=2)] == ["m0", "m1"]
    # The cursor skips what was already handed to the publisher.
    assert [i.message_id for i in outbox.pending(limit=2, after=items[1].seq)] == ["m2", "m3"]
    assert outbox.depth() == 5


def test_seq_keeps_growing_after_the_queue_empties(outbox: Outbox) -> None:
    # The link sends what lies after the last seq it handed over: a seq used again once
    # everything was acknowledged would be passed over.
    outbox.put("devices/d1/state", b"a", STATE, "m1")
    outbox.put("devices/d1/state", b"b", STATE, "m2")
    last = outbox.pending()[-1].seq
    assert outbox.ack_many(["m1", "m2"]) == 2
    outbox.put("devices/d1/state", b"c", STATE, "m3")
    assert [i.message_id for i in outbox.pending(after=last)] == ["m3"]


def test_a_version_1_outbox_is_upgraded_with_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as fresh:
        fresh.put("devices/d1/state", b"a", STATE, "m1")
        fresh.put("devices/d1/event", b"b", EVENT, "m2")
    db = sqlite3.connect(path, isolation_level=None)
    (ddl,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'outbox_message'").fetchone()
    triggers = [r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE type='trigger'")]
    (index,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = "
                          "'ix_outbox_message_kind_seq'").fetchone()  # fmt: skip
    db.executescript(  # the version 1 table: seqs without AUTOINCREMENT
        "BEGIN; DROP TRIGGER outbox_message_added; DROP TRIGGER outbox_message_removed;"
        "DROP INDEX ix_outbox_message_kind_seq;"
        "ALTER TABLE outbox_message RENAME TO old;"
        f"{ddl.replace(' AUTOINCREMENT', '')}; INSERT INTO outbox_message SELECT * FROM old;"
        f"DROP TABLE old; {index}; {'; '.join(triggers)}; PRAGMA user_version = 1; COMMIT;"
    )
    db.close()

    with Outbox(path) as upgraded:
        assert ids(upgraded) == ["m1", "m2"] and upgraded.depth() == 2
        assert upgraded.ack_many(["m1", "m2"]) == 2 and upgraded.depth() == 0
        upgraded.put("devices/d1/state", b"c", STATE, "m3")
        assert upgraded.pending()[0].seq == 3 and upgraded.depth() == 1
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    assert (
        "AUTOINCREMENT"
        in db.execute("SELECT sql FROM sqlite_master WHERE name = 'outbox_message'").fetchone()[0]
    )
    db.close()


def test_created_at_comes_from_the_clock(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", clock=lambda: 1_700_000_000.5)
    outbox.put("devices/d1/state", b"{}", STATE, "m1")
    (item,) = outbox.pending()
    assert item.created_at == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert outbox.stats().oldest_created_at == item.created_at


def test_put_is_idempotent_on_message_id(outbox: Outbox) -> None:
    outbox.put("devices/d1/state", b"v1", STATE, "m1")
    outbox.put("devices/d1/state", b"v1", STATE, "m1")
    assert ids(outbox) == ["m1"]

    with pytest.raises(MessageIdConflict, match="m1"):
        outbox.put("devices/d1/state", b"v2", STATE, "m1")
    with pytest.raises(MessageIdConflict):
        outbox.put("devices/d1/state", b"v1", EVENT, "m1")
    (item,) = outbox.pending()
    assert (item.payload, item.kind) == (b"v1", STATE)


def test_ack_deletes_only_that_message(outbox: Outbox) -> None:
    for n in range(4):
        outbox.put("devices/d1/state", b"x", STATE, f"m{n}")
    outbox.record_attempt(["m1", "m2"])
    outbox.record_attempt(["m1"])
    assert [i.attempts for i in outbox.pending()] == [0, 2, 1, 0]

    assert outbox.ack("m1") is True
    assert outbox.ack("m1") is False  # a second PUBACK, or a resend's, changes nothing
    assert outbox.ack("never-queued") is False
    assert ids(outbox) == ["m0", "m2", "m3"]
    assert outbox.ack_many(["m0", "m3", "m9"]) == 2
    assert ids(outbox) == ["m2"]
    assert outbox.depth() == 1


def test_full_outbox_drops_the_oldest_telemetry_first_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, max_messages=5)
    outbox.put("d/state", b"s", STATE, "s1")
    outbox.put("telemetry", b"t", TELEMETRY, "t1")
    outbox.put("d/event", b"e", EVENT, "e1")
    outbox.put("telemetry", b"t", TELEMETRY, "t2")
    outbox.put("telemetry", b"t", TELEMETRY, "t3")

    outbox.put("d/state", b"s", STATE, "s2")  # full: t1 goes, not the older s1
    assert ids(outbox) == ["s1", "e1", "t2", "t3", "s2"]
    outbox.put("telemetry", b"t", TELEMETRY, "t4")  # telemetry makes room the same way
    assert ids(outbox) == ["s1", "e1", "t3", "s2", "t4"]
    assert outbox.dropped_telemetry() == 2
    assert outbox.depth() == 5
    outbox.close()

    # The counter is on disk, for the status after a restart.
    reopened = Outbox(path, max_messages=5)
    assert reopened.dropped_telemetry() == 2
    stats = reopened.stats()
    assert stats.by_kind == {STATE: 2, EVENT: 1, TELEMETRY: 2}
    assert stats.dropped_telemetry == 2


def test_byte_bound_drops_as_much_old_telemetry_as_needed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1000, max_payload_bytes=600)
    topic = "t"  # 1 byte of topic per message
    outbox.put(topic, bytes(199), STATE, "s1")  # 200 bytes
    for n in range(4):
        outbox.put(topic, bytes(199), TELEMETRY, f"t{n}")  # 4 x 200: exactly full
    assert outbox.stats().size_bytes == 1000

    outbox.put(topic, bytes(399), EVENT, "e1")  # 400 bytes: two oldest telemetry go
    assert ids(outbox) == ["s1", "t2", "t3", "e1"]
    assert outbox.dropped_telemetry() == 2
    assert outbox.stats().size_bytes == 1000


def test_state_and_events_are_never_dropped(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_messages=3)
    outbox.put("d/state", b"s", STATE, "s1")
    outbox.put("d/event", b"e", EVENT, "e1")
    outbox.put("d/state", b"s", STATE, "s2")

    with pytest.raises(OutboxFull, match="never dropped"):
        outbox.put("d/event", b"e", EVENT, "e2")
    # Telemetry that cannot fit is itself dropped and counted; nothing queued moves.
    outbox.put("telemetry", b"t", TELEMETRY, "t1")
    assert ids(outbox) == ["s1", "e1", "s2"]
    assert outbox.dropped_telemetry() == 1

    outbox.ack("s1")  # the link delivered one: room again
    outbox.put("d/event", b"e", EVENT, "e2")
    assert ids(outbox) == ["e1", "s2", "e2"]


def test_telemetry_bigger_than_all_older_telemetry_is_dropped_alone(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1000, max_payload_bytes=900)
    outbox.put("t", bytes(699), STATE, "s1")
    outbox.put("t", bytes(99), TELEMETRY, "t1")
    outbox.put("t", bytes(499), TELEMETRY, "t2")  # would need more than t1 can free
    assert ids(outbox) == ["s1", "t1"]
    assert outbox.dropped_telemetry() == 1


def test_oversized_payload_is_refused(outbox: Outbox) -> None:
    outbox.put("d/state", bytes(MAX_PAYLOAD_BYTES), STATE, "at-limit")
    with pytest.raises(PayloadTooLarge, match=f"{MAX_PAYLOAD_BYTES + 1} bytes"):
        outbox.put("d/state", bytes(MAX_PAYLOAD_BYTES + 1), STATE, "over")
    assert ids(outbox) == ["at-limit"]


@pytest.mark.parametrize(
    ("topic", "kind", "message_id", "complaint"),
    [
        ("devices/+/state", STATE, "m1", "not publishable"),
        ("devices/#", STATE, "m1", "not publishable"),
        ("$SYS/broker", STATE, "m1", "not publishable"),
        ("a\0b", STATE, "m1", "not publishable"),
        ("", STATE, "m1", "non-empty"),
        ("devices/d1/metrics", "metrics", "m1", "not one of state, event, telemetry"),
        ("devices/d1/state", STATE, "", "1 to 128 characters"),
        ("devices/d1/state", STATE, "x" * 129, "1 to 128 characters"),
    ],
)
def test_unpublishable_messages_are_refused(
    outbox: Outbox, topic: str, kind: OutboxKind, message_id: str, complaint: str
) -> None:
    with pytest.raises(InvalidMessage, match=complaint):
        outbox.put(topic, b"{}", kind, message_id)
    assert outbox.depth() == 0


def test_closed_outbox_says_so(outbox: Outbox) -> None:
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxClosed, match="closed"):
        outbox.put("d/state", b"s", STATE, "s1")
    with pytest.raises(OutboxClosed):
        outbox.depth()


def test_only_an_outbox_database_opens(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(OutboxUnusable, match=r"junk\.db"):
        Outbox(junk)

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE devices (id TEXT)")
    with pytest.raises(OutboxUnusable, match="not an outbox"):
        Outbox(other)

    newer = tmp_path / "newer.db"
    Outbox(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(OutboxUnusable, match="newer"):
        Outbox(newer)


def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as outbox:
        outbox.put("d/state", b"s", STATE, "s1")
        with sqlite3.connect(path) as reader:  # another process's view: a status command
            assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert reader.execute("SELECT count(*) FROM outbox_message").fetchone() == (1,)


WRITER = """
import sys
from pathlib import Path
from edge_agent.sync import OutboxKind, Outbox

outbox = Outbox(Path(sys.argv[1]))
n = 0
while True:
    kind = OutboxKind.TELEMETRY if n % 3 == 0 else OutboxKind.STATE
    outbox.put(f"devices/d1/{kind}", f"report {n}".encode(), kind, f"m{n}")
    print(f"m{n}", flush=True)  # only after put() returned
    n += 1
"""


def test_put_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    confirmed: list[str] = []
    try:
        while len(confirmed) < 100:
            line = writer.stdout.readline()
            assert line, f"the writer died early with {writer.wait()}"
            confirmed.append(line.strip())
        os.kill(writer.pid, signal.SIGKILL)  # mid-stream, likely inside a put()
    finally:
        writer.kill()
        writer.wait()
    confirmed += writer.stdout.read().split()  # printed before the kill, not yet read
    writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    # The commits are still in the write-ahead log: recovery is what is tested.
    assert Path(f"{path}-wal").stat().st_size > 0

    with Outbox(path) as outbox:
        items = outbox.pending(limit=100_000)
        found = [i.message_id for i in items]
        # Every confirmed put is there, in order; at most one more (committed, not printed).
        assert found[: len(confirmed)] == confirmed
        assert len(found) - len(confirmed) in (0, 1)
        assert all(i.payload == f"report {i.message_id[1:]}".encode() for i in items)
        assert outbox.depth() == len(found)
        outbox.put("devices/d1/state", b"after", STATE, "after-restart")
        assert ids(outbox)[-1] == "after-restart"


def test_put_and_ack_from_several_threads(tmp_path: Path) -> None:
    """Two producers and a publisher thread acking one by one, as paho's network thread
    does; the bound drops telemetry meanwhile. Every message ends up acked, dropped or
    still queued, exactly once."""
    per_producer = 200
    # Room for every state report (50 per producer), not for all the telemetry as well.
    outbox = Outbox(tmp_path / "outbox.db", max_messages=110)
    errors: list[BaseException] = []
    acked: list[str] = []
    producers_done = threading.Event()

    def produce(name: str) -> None:
        try:
            for n in range(per_producer):
                kind = TELEMETRY if n % 4 else STATE
                outbox.put(f"devices/{name}/{kind}", b"x" * 50, kind, f"{name}-{n}")
        except BaseException as exc:
            errors.append(exc)

    def publish() -> None:
        try:
            while not outbox.dropped_telemetry():  # the bound is in play from here on
                producers_done.wait(0.001)
            while True:
                batch = outbox.pending(limit=10)
                if not batch and producers_done.is_set():
                    return
                for item in batch:
                    if outbox.ack(item.message_id):
                        acked.append(item.message_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(name,)) for name in ("a", "b")]
    publisher = threading.Thread(target=publish)
    for thread in [*threads, publisher]:
        thread.start()
    for thread in threads:
        thread.join(30)
    producers_done.set()
    publisher.join(30)

    assert not errors, errors
    assert outbox.depth() == 0
    assert len(acked) == len(set(acked))
    assert len(acked) + outbox.dropped_telemetry() == 2 * per_producer
    # State is never dropped, even under contention; each producer's messages keep order.
    for name in ("a", "b"):
        states = [f"{name}-{n}" for n in range(0, per_producer, 4)]
        assert [m for m in acked if m in set(states)] == states
