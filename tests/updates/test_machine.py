"""The update state machine: only the table's transitions, persisted with a schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.updates.errors import StateDamaged
from edge_agent.updates.machine import (
    TRANSITIONS,
    Event,
    IllegalTransition,
    Phase,
    StateFile,
    UpdateRecord,
    advance,
)


def test_happy_path_chain() -> None:
    record = UpdateRecord()
    for event in (Event.START, Event.DOWNLOADED, Event.INSTALLED, Event.ACTIVATED, Event.HEALTHY):
        record = advance(record, event)
    assert record.phase is Phase.IDLE
    assert record.history == [
        "idle-start->downloading",
        "downloading-downloaded->installing",
        "installing-installed->activating",
        "activating-activated->health_check",
        "health_check-healthy->idle",
    ]


def test_every_phase_but_idle_can_fail_somewhere() -> None:
    failing = {phase for (phase, event) in TRANSITIONS if event is Event.FAILED}
    assert failing == {Phase.DOWNLOADING, Phase.INSTALLING, Phase.ACTIVATING, Phase.HEALTH_CHECK}


def test_illegal_event_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="healthy is not allowed in phase idle"):
        advance(UpdateRecord(), Event.HEALTHY)


def test_state_survives_a_reload(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "s.json")
    state.save(advance(UpdateRecord(model="m", version="2.0.0"), Event.START))
    assert state.load().phase is Phase.DOWNLOADING


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(StateDamaged, match="schema version 99"):
        StateFile(path).load()


def test_damaged_state_file_is_refused_and_can_be_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{")
    state = StateFile(path)
    with pytest.raises(StateDamaged, match=r"s\.json is damaged"):
        state.load()
    aside = state.quarantine()
    assert aside.read_text() == "{" and aside.name.startswith("s.json.damaged-")
    assert state.load().phase is Phase.IDLE
