"""Act on the director's signed rollback: re-activate the kept previous version and lower
the floor to exactly it. Whether it is allowed is edge_agent.updates.rollback's rule, and
the release repository must still list that version: the director's key alone never
brings back a release the repository revoked (TUF's split of roles)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edge_agent.updates.errors import Refused
from edge_agent.updates.machine import Phase
from edge_agent.updates.manager import Outcome, UpdateManager
from edge_agent.updates.rollback import check_rollback

if TYPE_CHECKING:  # the agent imports TUF's client only when it updates
    from edge_agent.updates.source import ReleaseSource

log = logging.getLogger(__name__)


def reactivate_kept(
    manager: UpdateManager,
    releases: ReleaseSource,
    model: str,
    version: str,
    *,
    rolled_back_from: str | None,
) -> Outcome:
    """Refused unless the signed statement names the active release, `version` is the one
    the store kept and `releases` still lists it; then `version` is active again (one
    symlink swap)."""
    record = manager.state.load()
    if record.phase is not Phase.IDLE:
        raise Refused(f"an update is in progress ({record.phase}); let it finish first")
    store = manager.store
    active, previous = store.active(model), store.previous(model)
    check_rollback(
        model,
        version,
        rolled_back_from=rolled_back_from,
        active=active.version if active else None,
        previous=previous.version if previous else None,
    )
    releases.manifest(model, version)  # Refused if revoked since it was installed
    # The floor first: a power cut before the swap leaves the newer release active with a
    # floor that allows only this one step back, to the version kept on disk.
    store.lower_floor(model, version)
    restored = store.rollback(model)
    log.warning("%s rolled back from %s to %s by the hub", model, rolled_back_from, restored)
    return Outcome(
        model, restored, True, f"{model} rolled back from {rolled_back_from} to {restored}"
    )
