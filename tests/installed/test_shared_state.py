"""State both agent slots share survives a switch in both directions.

Forward (an older agent's files opened by this one) is the migrations' job and tested with
them (tests/sync/test_outbox.py: an outbox of schema 1). Backward is the fallback's case:
the newer agent ran on trial, wrote its files, failed its health check, and this (older)
code opens what it left. A newer agent changes a shared format only additively while it
may still fall back, and declares the oldest schema that can read it (`readable_from`);
anything else must be refused with what to do, never misread."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from edge_agent.installed.launcher import load_state
from edge_agent.sync.outbox import COMPAT_TABLE, SCHEMA_VERSION, Outbox, OutboxKind, OutboxUnusable
from edge_agent.updates.errors import StateDamaged
from edge_agent.updates.machine import SCHEMA_VERSION as UPDATE_SCHEMA
from edge_agent.updates.machine import Phase, StateFile, UpdateRecord

NEWER = SCHEMA_VERSION + 1


def _as_the_newer_agent(path: Path, readable_from: int) -> None:
    """What a newer agent's migration does: a column with a default, a table of its own, a
    message written with the new column, its schema version and what can still read it."""
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE outbox_message ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
        db.execute("CREATE TABLE outbox_routes (topic TEXT PRIMARY KEY, broker TEXT)")
        db.execute(
            "INSERT INTO outbox_message (message_id, topic, kind, payload, size_bytes, "
            "created_at_s, attempts, priority) VALUES ('from-newer', 'd/state', 'state', "
            "x'6e6577', 10, 1.0, 0, 5)"
        )
        db.execute(f"DELETE FROM {COMPAT_TABLE}")
        db.execute(f"INSERT INTO {COMPAT_TABLE} VALUES ({NEWER}, {readable_from})")
        db.execute(f"PRAGMA user_version = {NEWER}")


def test_an_outbox_of_a_newer_additive_schema_is_used_by_this_agent_after_a_fallback(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as outbox:
        outbox.put("d/state", b"old", OutboxKind.STATE, "from-older")
    _as_the_newer_agent(path, readable_from=SCHEMA_VERSION)

    with Outbox(path) as outbox:  # this agent, back after the newer one fell back
        assert {m.message_id for m in outbox.pending()} == {"from-older", "from-newer"}
        outbox.put("d/state", b"again", OutboxKind.STATE, "after-fallback")
        assert outbox.ack_many(["from-newer", "from-older"]) == 2
        assert [m.message_id for m in outbox.pending()] == ["after-fallback"]
        assert outbox.depth() == 1
    with sqlite3.connect(path) as db:  # left as the newer agent wrote it, for its next try
        assert db.execute("PRAGMA user_version").fetchone() == (NEWER,)
        assert db.execute("SELECT priority FROM outbox_message").fetchall() == [(0,)]


def test_an_outbox_the_newer_agent_made_unreadable_is_refused_saying_what_to_do(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    _as_the_newer_agent(path, readable_from=NEWER)
    with pytest.raises(OutboxUnusable, match="not readable by it; start the newer agent"):
        Outbox(path)
    with sqlite3.connect(path) as db:  # refused, and not touched
        assert db.execute("PRAGMA user_version").fetchone() == (NEWER,)


def test_an_update_record_of_a_newer_schema_is_read_and_migrated_back_on_save(
    tmp_path: Path,
) -> None:
    path = tmp_path / "update-state.json"
    newer = UpdateRecord(model="tiny", version="1.1.0", failed={"tiny": ["1.2.0"]}).model_dump()
    newer |= {"schema_version": UPDATE_SCHEMA + 1, "readable_from": UPDATE_SCHEMA,
              "download_resume": {"offset": 123}}  # fmt: skip
    path.write_text(json.dumps(newer))
    state = StateFile(path)
    record = state.load()
    assert record.failed == {"tiny": ["1.2.0"]} and record.phase is Phase.IDLE
    state.save(record)
    back = json.loads(path.read_text())
    assert back["schema_version"] == UPDATE_SCHEMA and "download_resume" not in back
    assert state.load().failed == {"tiny": ["1.2.0"]}

    newer["readable_from"] = UPDATE_SCHEMA + 1  # a change this agent cannot read
    path.write_text(json.dumps(newer))
    with pytest.raises(StateDamaged, match="schema version"):
        state.load()


def test_slots_of_a_newer_launcher_are_read_by_this_one(tmp_path: Path) -> None:
    (tmp_path / "slots.json").write_text(
        json.dumps(
            {
                "committed": "a",
                "trial": "b",
                "trial_version": "0.2.0",
                "schema_version": 2,
                "trial_started_at": "2026-11-28T00:00:00Z",
            }
        )
    )
    state = load_state(tmp_path)
    assert (state.committed, state.trial, state.trial_version) == ("a", "b", "0.2.0")
