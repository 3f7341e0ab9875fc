"""The maintenance window on the device: download at any time, activate only inside it.

The window comes in the signed desired state (edge_agent.protocol.window), so the device
obeys it with no hub to ask. Outside the window a release is prefetched: TUF refreshed,
its manifest verified, the rules that would refuse it checked (version floor, failed
before), its missing chunks fetched and verified into the store; nothing is installed or
activated. When the window opens the install runs as usual and finds its chunks there.

A desired state waiting for its window is kept in a file (`HeldDesired`): after a restart
the retained message is a replay the link ignores, and the wait must survive it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from edge_agent.atomic import write_atomic
from edge_agent.protocol import DesiredState
from edge_agent.updates.manager import UpdateManager
from edge_agent.updates.source import ReleaseSource

log = logging.getLogger(__name__)

HELD_FILE = "desired-waiting-for-window.json"


class WaitingForWindow(Exception):
    """The release is downloaded; it activates when the maintenance window opens."""

    def __init__(self, model: str, version: str, opens_at: datetime | None) -> None:
        when = opens_at.isoformat() if opens_at else "never (the window no longer opens)"
        super().__init__(f"{model} {version} is downloaded and activates at {when}")
        self.model, self.version, self.opens_at = model, version, opens_at


def prefetch(manager: UpdateManager, source: ReleaseSource, model: str, version: str) -> int:
    """Fetch and verify the chunks of `model` `version` that the store lacks, without
    installing; the bytes fetched. Refused (as the install would be) before any download."""
    if manager.choose(source, model, version) is None:
        return 0  # already active
    manifest = source.manifest(model, version)  # listed and verified by ngclient
    fetched = 0
    for sha, size in sorted(manager.store.missing_chunks(manifest).items()):
        manager.store.put_chunk(sha, source.chunk(sha, size))  # checks the hash
        fetched += size
    log.info("%s %s prefetched (%d bytes) for its maintenance window", model, version, fetched)
    return fetched


class HeldDesired:
    """The verified desired state that waits for its window, across restarts."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / HELD_FILE

    def save(self, state: DesiredState) -> None:
        write_atomic(self.path, state.model_dump_json().encode(), mode=0o600)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def load(self, accepted_sequence: int, now: datetime) -> DesiredState | None:
        """The held state if it is still the last accepted one and not expired."""
        try:
            state = DesiredState.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.warning("%s is unreadable (%s): ignored", self.path, exc)
            return None
        if state.sequence != accepted_sequence or state.expires <= now:
            self.clear()  # superseded or expired: the hub's newer state rules
            return None
        return state
