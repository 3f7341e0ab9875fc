"""The update state machine as data: phases, events, one transition table.

The record of an update in flight survives a crash (schema-versioned JSON, written
atomically at every transition). After a restart the agent resumes from the phase it
finds; the attempt counter stops an update that keeps crashing the agent from looping.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent import faults
from edge_agent.atomic import fsync_dir, write_atomic
from edge_agent.protocol import UpdateEvent, UpdatePhase
from edge_agent.updates.errors import StateDamaged

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


def _newer_but_readable(data: dict[str, object]) -> bool:
    """Written by a newer schema that declares this one can still read it
    (`readable_from`, which a newer agent writes only beside additive changes)."""
    found, readable_from = data.get("schema_version"), data.get("readable_from")
    return (
        isinstance(found, int)
        and found > SCHEMA_VERSION
        and isinstance(readable_from, int)
        and readable_from <= SCHEMA_VERSION
    )


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> UpdateRecord:
        """The record on disk (IDLE when there is none); StateDamaged when unreadable."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return UpdateRecord()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StateDamaged(f"{self.path} is damaged ({exc})") from exc
        if isinstance(data, dict) and _newer_but_readable(data):
            # A newer agent's record, written while its slot could still fall back: its
            # additions are not ours to read, and our next save migrates the file back.
            data = {k: v for k, v in data.items() if k in UpdateRecord.model_fields}
            data["schema_version"] = SCHEMA_VERSION
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            found = data.get("schema_version") if isinstance(data, dict) else None
            raise StateDamaged(
                f"{self.path} has schema version {found}, this agent reads {SCHEMA_VERSION}"
            )
        try:
            return UpdateRecord.model_validate(data)
        except ValidationError as exc:
            raise StateDamaged(f"{self.path} is damaged ({exc})") from exc

    def save(self, record: UpdateRecord) -> None:
        write_atomic(self.path, record.model_dump_json(indent=2).encode())
        faults.checkpoint("state-saved")

    def quarantine(self) -> Path:
        """Move the unreadable file aside (kept for a post-mortem); the next load starts
        from IDLE. The store's pointers and floors live elsewhere and are untouched."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        self.path.rename(aside)
        fsync_dir(self.path.parent)
        return aside


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
