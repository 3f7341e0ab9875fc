"""The agent's own release in the fleet's signed desired state (release `edge-agent`).

The sync service routes that entry here instead of to the model store: the installer is
fetched and verified chunk by chunk (edge_agent.installed.release), installed with its own
script into the slot that does not run, and the launcher is asked for a trial start. The
launcher then switches (the old agent drains; with a held socket no request fails), and the
new agent's health check commits it or the previous slot comes back.

Nothing happens without a desired state that names the release, and never when the
device's user pinned another version or deferred self-updates (edge_agent.installed.policy):
the hold is reported to the hub in the release's ModelReport (`held`), so the operator
sees why the device does not follow. The result of a trial (committed, or fallen back and
why) is reported once, by whichever agent runs after it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from packaging.version import InvalidVersion, Version

from edge_agent.atomic import write_atomic
from edge_agent.installed.launcher import (
    LauncherError,
    SlotState,
    load_state,
    other_slot,
    request_trial,
)
from edge_agent.installed.policy import load_policy
from edge_agent.installed.release import AGENT_RELEASE, fetch_installer, run_installer
from edge_agent.installed.switch import launched_slot
from edge_agent.protocol import InstallEvent, ModelReport, UpdateEvent, UpdateResult
from edge_agent.sync.orchestrate import ActivatesElsewhere, HeldBack
from edge_agent.updates.errors import Refused, UpdateError
from edge_agent.updates.source import ReleaseSource

log = logging.getLogger(__name__)

REPORTED_FILE = "agent-trial-reported.json"  # which trial result the hub has been sent
VERSION_FILE = ".edge-agent-version"  # written by the installer, last, in a whole slot

__all__ = ["AGENT_RELEASE", "AgentSelfUpdate", "SwitchRequested"]


class SwitchRequested(ActivatesElsewhere):
    """Installed into the other slot; the launcher switches to it now."""

    def __init__(self, version: str, slot: str) -> None:
        super().__init__(f"edge-agent {version} installed in slot {slot}; switching to it")
        self.version, self.slot = version, slot


class AgentSelfUpdate:
    def __init__(
        self,
        data_dir: Path,
        state_dir: Path,
        running_version: str,
        online: Callable[[], bool] = lambda: False,
    ) -> None:
        """`data_dir`: where the policy lives; `state_dir`: the sync folder (reports);
        `online()`: the link reaches the hub now (then so must the next agent)."""
        self.online = online
        self.data_dir = data_dir
        self.state_dir = state_dir
        self.running_version = running_version
        launched = launched_slot()
        self.root: Path | None = launched[0] if launched else None
        self.slot: str | None = launched[1] if launched else None

    # --- what runs and what holds it ---------------------------------------------------

    def _slots(self) -> SlotState | None:
        if self.root is None:
            return None
        try:
            return load_state(self.root)
        except LauncherError as exc:
            log.warning("%s", exc)
            return None

    def active_version(self) -> str:
        """The version of the running slot as its installer recorded it."""
        if self.root is not None and self.slot is not None:
            try:
                return (self.root / self.slot / VERSION_FILE).read_text().strip()
            except OSError:
                pass
        return self.running_version

    def superseded(self) -> bool:
        """Another slot was committed while this agent drains: it reports nothing more
        (what runs is the new agent's to say)."""
        slots = self._slots()
        return slots is not None and self.slot is not None and slots.committed != self.slot

    def blocked(self, version: str) -> str | None:
        """Why `version` may not be installed now (reported, not an error), or None."""
        policy, now = load_policy(self.data_dir), datetime.now(UTC)
        return policy.hold(now) if policy.blocks(version, now) else None

    def settled(self, version: str) -> bool:
        """Nothing to do for `version` now: it failed here before, it is on trial, or this
        agent is the one being replaced (it drains; the new one decides)."""
        slots = self._slots()
        if slots is None:
            return False
        return (
            version in slots.failed_versions
            or slots.trial_version == version
            or (self.slot is not None and slots.committed != self.slot)
        )

    def report(self) -> ModelReport:
        slots = self._slots()
        try:
            held = load_policy(self.data_dir).hold(datetime.now(UTC))
        except ValueError as exc:  # an unreadable policy file: the operator should know
            held = str(exc)
        last = slots.last_result if slots else None
        return ModelReport(
            active=self.active_version(),
            previous=None,
            pending=slots.trial_version if slots else None,
            held=held,
            last_result=None if last is None else _result(last),
            last_error=None if last is None or last.get("ok") else str(last.get("reason"))[:2000],
        )

    # --- install ------------------------------------------------------------------------

    def install(self, releases: ReleaseSource, version: str) -> None:
        """Fetch, verify and install `version` into the other slot, then ask for a switch
        (raises SwitchRequested). HeldBack or UpdateError say why not."""
        if self.root is None:
            raise UpdateError(
                "this agent was not started by the installed service's launcher, so it has "
                "no slot to install into: install it with firmware-images' installer"
            )
        held = self.blocked(version)
        if held:
            raise HeldBack(held)
        if self.superseded():
            raise UpdateError(
                f"slot {self.slot} is being replaced; the agent now committed decides about "
                f"edge-agent {version}"
            )
        try:
            if Version(version) < Version(self.active_version()):
                raise Refused(
                    f"edge-agent {version} is older than the running {self.active_version()}; "
                    "the fleet cannot move an agent backwards"
                )
        except InvalidVersion as exc:
            raise Refused(f"edge-agent {version}: {exc}") from exc
        slots = self._slots() or SlotState()
        if version in slots.failed_versions:
            raise Refused(f"edge-agent {version} failed its health check here before; not again")
        target = other_slot(slots.committed or self.slot)
        with tempfile.TemporaryDirectory(prefix=".incoming-", dir=self.root) as staging:
            folder = Path(staging) / "installer"
            fetch_installer(releases, version, folder)  # every byte verified first
            run_installer(folder, self.root, target, self.data_dir)
        try:
            request_trial(self.root, target, version, needs_hub=self.online())
        except LauncherError as exc:
            raise UpdateError(str(exc)) from exc
        log.warning("edge-agent %s installed in slot %s: switching to it", version, target)
        raise SwitchRequested(version, target)

    # --- the outcome of the last trial, once ---------------------------------------------

    def _last_key(self) -> tuple[str, dict[str, object]] | None:
        slots = self._slots()
        last = slots.last_result if slots else None
        if not last or not last.get("version"):
            return None
        return f"{last.get('version')}@{last.get('at')}", last

    def unreported_result(self) -> InstallEvent | None:
        """The last trial's result if the hub was not sent it yet (then `mark_reported`)."""
        found = self._last_key()
        if found is None:
            return None
        key, last = found
        try:
            if json.loads((self.state_dir / REPORTED_FILE).read_text()).get("reported") == key:
                return None
        except (OSError, ValueError):
            pass
        ok = bool(last.get("ok"))
        return InstallEvent(
            model=AGENT_RELEASE,
            version=str(last["version"]),
            event=UpdateEvent.HEALTHY if ok else UpdateEvent.ROLLED_BACK,
            error=None if ok else str(last.get("reason"))[:2000],
        )

    def mark_reported(self) -> None:
        """Once the result is in the durable outbox: never sent twice."""
        found = self._last_key()
        if found is not None:
            write_atomic(
                self.state_dir / REPORTED_FILE, json.dumps({"reported": found[0]}).encode()
            )


def _result(last: dict[str, object]) -> UpdateResult:
    return UpdateResult.SUCCEEDED if last.get("ok") else UpdateResult.ROLLED_BACK
