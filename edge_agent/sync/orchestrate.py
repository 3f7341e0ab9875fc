"""From verified desired state to the update state machine, with reports to the hub.

`DesiredApplier` is the Link's `on_desired` callback (it runs in the link's worker thread,
never paho's). For each model whose desired version differs from the active one it queues
an InstallEvent(start), calls `install(model, version)` (the caller wires that to
UpdateManager.update with a ReleaseSource), queues InstallEvent(healthy | failed) with the
error, and finally one ReportedState with what now runs and the desired sequence. An
install that raises WaitingForWindow has downloaded the release and waits for the
maintenance window: InstallEvent(downloaded), and the report names it `pending` with the
time it activates. Every
report goes through the durable outbox, so results made offline still reach the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_agent.protocol import (
    DesiredState,
    Envelope,
    InstallEvent,
    ModelReport,
    ReportedState,
    UpdateEvent,
    UpdateResult,
)
from edge_agent.sync.link import enqueue
from edge_agent.sync.outbox import Outbox
from edge_agent.sync.window import WaitingForWindow

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


class HeldBack(Exception):
    """The device's user holds this release back (a pinned or deferred agent): reported
    with the reason, not a failure, and no install event."""


class ActivatesElsewhere(Exception):
    """Installed; another process activates it (the agent's next slot, after a switch):
    reported as installed and pending until that process reports its health."""


class DesiredApplier:
    def __init__(
        self,
        outbox: Outbox,
        device_id: str,
        agent_version: str,
        *,
        active_version: Callable[[str], str | None],
        install: Callable[[str, str], str | None],
        nudge: Callable[[], None] = lambda: None,
        describe: Callable[[str], ModelReport] | None = None,
        held: Callable[[str, str], str | None] = lambda model, version: None,
    ) -> None:
        """`active_version(model)`: what runs now. `install(model, version)`: install it,
        return the version active afterwards, raise with a readable message on failure.
        `describe(model)`: the model's report (active, previous, floor) before results.
        `held(model, version)`: why the device's user holds it back (no install starts)."""
        self.outbox = outbox
        self.device_id = device_id
        self.agent_version = agent_version
        self.active_version = active_version
        self.install = install
        self.nudge = nudge
        self.describe = describe or (lambda model: ModelReport(active=self.active_version(model)))
        self.held = held

    def _send(self, payload: InstallEvent | ReportedState) -> None:
        enqueue(self.outbox, Envelope.of(payload, device_id=self.device_id))
        self.nudge()

    def _event(
        self,
        model: str,
        version: str,
        event: UpdateEvent,
        current: str | None,
        *,
        error: str | None = None,
    ) -> None:
        """One install event for model's move from current to version."""
        self._send(
            InstallEvent(
                model=model, version=version, event=event, from_version=current, error=error
            )
        )

    def __call__(self, state: DesiredState) -> None:
        reports: dict[str, ModelReport] = {}
        for model, release in sorted(state.models.items()):
            current = self.active_version(model)
            if current == release.version:
                reports[model] = self.describe(model)
                continue
            hold = self.held(model, release.version)
            if hold is not None:
                reports[model] = self.describe(model).model_copy(
                    update={"pending": release.version, "held": hold[:MAX_ERROR_CHARS]}
                )
                continue
            self._event(model, release.version, UpdateEvent.START, current)
            try:
                active = self.install(model, release.version)
            except WaitingForWindow as waiting:  # downloaded; not a failure
                self._event(model, release.version, UpdateEvent.DOWNLOADED, current)
                reports[model] = self.describe(model).model_copy(
                    update={"pending": release.version, "activates_at": waiting.opens_at}
                )
                continue
            except HeldBack as held:
                reports[model] = self.describe(model).model_copy(
                    update={"pending": release.version, "held": str(held)[:MAX_ERROR_CHARS]}
                )
                continue
            except ActivatesElsewhere:
                self._event(model, release.version, UpdateEvent.INSTALLED, current)
                reports[model] = self.describe(model).model_copy(
                    update={"pending": release.version}
                )
                continue
            except Exception as exc:  # any failure is reported, never swallowed silently
                error = str(exc)[:MAX_ERROR_CHARS] or type(exc).__name__
                log.warning("%s %s: install failed: %s", model, release.version, error)
                self._event(model, release.version, UpdateEvent.FAILED, current, error=error)
                reports[model] = self.describe(model).model_copy(
                    update={"last_result": UpdateResult.FAILED, "last_error": error}
                )
                continue
            self._event(model, release.version, UpdateEvent.HEALTHY, current)
            reports[model] = self.describe(model).model_copy(
                update={"active": active, "last_result": UpdateResult.SUCCEEDED}
            )
        self._send(
            ReportedState(
                agent_version=self.agent_version,
                models=reports,
                desired_sequence=state.sequence,
            )
        )
