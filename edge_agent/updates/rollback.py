"""When a device may go below its version floor: the director's signed rollback.

The floor (promise 3) stops every older release. The one exception is a rollback the hub
states inside a verified desired state (`DesiredState.rollbacks`: model -> the release
rolled back from), whose sequence and expiry already stop a replay. Even then the device
only re-activates the version it kept as `previous`, and only while the release rolled
back from is the one active: a statement naming another release, or asking for any
other older version, is refused. Pure: the caller reads the store and acts.
"""

from __future__ import annotations

from packaging.version import Version

from edge_agent.updates.errors import Refused


def is_rollback(wanted: str, floor: Version | None, active: str | None = None) -> bool:
    """Whether installing `wanted` would go below the floor or the active version (only a
    rollback may). The active one counts too: a power cut after the floor went down and
    before the swap leaves the floor at `wanted` with the newer release still active."""
    if floor is not None and Version(wanted) < floor:
        return True
    return active is not None and Version(wanted) < Version(active)


def check_rollback(
    model: str,
    wanted: str,
    *,
    rolled_back_from: str | None,
    active: str | None,
    previous: str | None,
) -> None:
    """Refused unless a signed statement rolls `model` back from the active release to
    the kept previous one, `wanted`."""
    if rolled_back_from is None:
        raise Refused(
            f"{model} {wanted} is below this device's version floor and the desired state "
            "carries no signed rollback of it (rollback protection)"
        )
    if active != rolled_back_from:
        raise Refused(
            f"the signed rollback of {model} is from {rolled_back_from}, but {active} is "
            "active: refused (a rollback only undoes the release it names)"
        )
    if previous != wanted:
        kept = previous or "none"
        raise Refused(
            f"the signed rollback of {model} asks for {wanted}, but the version this device "
            f"kept to roll back to is {kept}: refused (only the kept version is re-activated)"
        )
