"""The update state machine as data: phases, events, one transition table.

The record of an update in flight survives a crash (schema-versioned JSON, written
atomically at every transition). After a restart the agent resumes from the phase it
finds; the attempt counter stops an update that keeps crashing the agent from looping.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent import faults
from edge_agent.atomic import write_atomic
from edge_agent.protocol import UpdateEvent, UpdatePhase

SCHEMA_VERSION = 1
MAX_ATTEMPTS = 3


# The phases and events are wire values too (reported state, install events): the
# protocol defines them once.
Phase = UpdatePhase
Event = UpdateEvent


# fmt: off
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.IDLE,         Event.START):       Phase.DOWNLOADING,
    (Phase.DOWNLOADING,  Event.DOWNLOADED):  Phase.INSTALLING,
    (Phase.DOWNLOADING,  Event.FAILED):      Phase.IDLE,
    (Phase.INSTALLING,   Event.INSTALLED):   Phase.ACTIVATING,
    (Phase.INSTALLING,   Event.FAILED):      Phase.IDLE,
    (Phase.ACTIVATING,   Event.ACTIVATED):   Phase.HEALTH_CHECK,
    (Phase.ACTIVATING,   Event.FAILED):      Phase.ROLLING_BACK,
    (Phase.HEALTH_CHECK, Event.HEALTHY):     Phase.IDLE,
    (Phase.HEALTH_CHECK, Event.FAILED):      Phase.ROLLING_BACK,
    (Phase.ROLLING_BACK, Event.ROLLED_BACK): Phase.IDLE,
}
# fmt: on


class IllegalTransition(RuntimeError):
    pass


class UpdateRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    phase: Phase = Phase.IDLE
    model: str = ""
    version: str = ""
    from_version: str | None = None
    attempts: int = 0
    last_error: str | None = None
    manifest: str | None = None  # the pending release's manifest, as signed
    history: list[str] = Field(default_factory=list)
    failed: dict[str, list[str]] = Field(default_factory=dict)  # model -> versions refused


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> UpdateRecord:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return UpdateRecord()
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{self.path} is damaged ({exc}); move it aside to reset") from exc
        if data.get("schema_version") != SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {data.get('schema_version')}, this agent "
                f"reads {SCHEMA_VERSION}"
            )
        try:
            return UpdateRecord.model_validate(data)
        except ValidationError as exc:
            raise RuntimeError(f"{self.path} is damaged ({exc}); move it aside to reset") from exc

    def save(self, record: UpdateRecord) -> None:
        write_atomic(self.path, record.model_dump_json(indent=2).encode())
        faults.checkpoint("state-saved")


def advance(record: UpdateRecord, event: Event, *, error: str | None = None) -> UpdateRecord:
    """The record after `event`; refuses an event the table does not allow."""
    key = (record.phase, event)
    if key not in TRANSITIONS:
        raise IllegalTransition(f"event {event} is not allowed in phase {record.phase}")
    after = TRANSITIONS[key]
    update = {
        "phase": after,
        "history": [*record.history, f"{record.phase}-{event}->{after}"],
        "last_error": error if error is not None else record.last_error,
    }
    return record.model_copy(update=update)
