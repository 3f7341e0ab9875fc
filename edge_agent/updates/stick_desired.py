"""The signed desired state a USB bundle carries for this device, and what it allows.

The hub puts each named device's newest signed desired state (the director's Ed25519
signature, as over MQTT) at `repository/desired/<device-id>.json`; the authorisation lists
it, so it is copied and hashed like every other file. The device then verifies it as the
link would (edge_agent.protocol.verify_desired: its trusted director keys, this device,
not expired, not older than the last accepted sequence) with two differences that the
stick needs:

- expiry is judged as of the authorisation's `issued_at` (when the hub wrote the stick),
  the same rule as for the TUF metadata; the authorisation's own validity bounds it;
- the same state seen again (the same stick imported twice) is accepted, an older one is
  refused.

What it allows: only the releases it names for this device install, and only while its
maintenance window is open by the device's clock; outside it the import installs nothing.
No desired state for this device on the stick: the authorisation's releases install as
before (the hub chose not to pin them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from edge_agent.protocol import (
    DesiredState,
    DesiredStateRefused,
    Replayed,
    SignedDesired,
    verify_desired,
)
from edge_agent.protocol.bundle import DESIRED_DIR, Authorisation, BundleRelease
from edge_agent.sync.identity import Identity
from edge_agent.sync.state import SequenceFile, load_director_keys
from edge_agent.updates.errors import Refused

log = logging.getLogger(__name__)

IDENTITY_DIR = "identity"
SEQUENCE_FILE = "sync/desired-sequence.json"


@dataclass(frozen=True)
class Plan:
    """What this import may do: the releases to install, or why it waits."""

    releases: list[BundleRelease]
    skipped: list[str]  # "model version: why", for the report
    waiting_until: datetime | None = None  # the window is closed: install nothing until then
    window_closed: bool = False


def desired_on_stick(staging: Path, device_id: str) -> SignedDesired | None:
    path = staging / DESIRED_DIR / f"{device_id}.json"
    if not path.is_file():
        return None
    try:
        return SignedDesired.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise Refused(f"the bundle's desired state for this device is malformed: {exc}") from None


def verify_on_stick(
    signed: SignedDesired, data_dir: Path, device_id: str, authorisation: Authorisation
) -> DesiredState:
    """The verified state, its sequence recorded; Refused saying why not."""
    keys_path = Identity(data_dir / IDENTITY_DIR).director_keys_path
    try:
        keys = load_director_keys(keys_path)
    except ValueError as exc:
        raise Refused(
            f"the bundle carries a signed desired state, but this device holds no director "
            f"keys to check it ({exc}): enroll it (edge-agent enroll --offline)"
        ) from None
    sequences = SequenceFile(data_dir / SEQUENCE_FILE)
    last = sequences.load()
    try:
        state = verify_desired(
            signed,
            keys,
            device_id=device_id,
            now=authorisation.issued_at,
            last_sequence=max(last - 1, 0),  # the same state again is fine, older is not
        )
    except Replayed as exc:
        raise Refused(
            f"the bundle's desired state is older than one this device accepted ({exc}); "
            "nothing was installed: ask the hub for a new stick"
        ) from None
    except DesiredStateRefused as exc:
        raise Refused(
            f"the bundle's desired state is refused: {exc}; nothing was installed"
        ) from None
    if state.sequence > last:
        sequences.save(state.sequence)
    return state


def plan(authorisation: Authorisation, state: DesiredState | None, now: datetime) -> Plan:
    """The authorised releases the desired state names for this device, if its window is
    open at `now` (the device's clock)."""
    if state is None:
        return Plan(list(authorisation.releases), [])
    chosen: list[BundleRelease] = []
    skipped: list[str] = []
    for release in authorisation.releases:
        wanted = state.models.get(release.model)
        if wanted is None or wanted.version != release.version:
            names = f"names {wanted.version}" if wanted else "does not name this model"
            skipped.append(
                f"{release.model} {release.version}: not installed, this device's desired "
                f"state {names}"
            )
        else:
            chosen.append(release)
    window = state.window
    if chosen and window is not None and not window.is_open(now):
        opens = window.next_open(now)
        log.info("maintenance window closed: nothing is activated before %s", opens)
        return Plan([], skipped, opens, window_closed=True)
    return Plan(chosen, skipped)
