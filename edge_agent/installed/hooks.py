"""What `edge-agent serve` does as an installed service: tell its manager when it serves
(READY=1, watchdog pings) and leave for a new slot when the launcher has one on trial.

Two ways to switch. Where the launcher holds the API socket (`--listen`), it starts the
new slot beside this agent and sends this one SIGTERM once the new one is ready: this
agent drains like any stop, and a new agent accepts nothing before its model is loaded.
Without a held socket this agent drains itself and exits RESTART_EXIT for the launcher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from edge_agent.installed.handoff import handed_down
from edge_agent.installed.launcher import RESTART_EXIT, LauncherError, load_state
from edge_agent.installed.readiness import Readiness
from edge_agent.installed.switch import SwitchWatcher, launched_slot

if TYPE_CHECKING:
    from edge_agent.runtime.service import ModelService

__all__ = ["RESTART_EXIT", "ServiceHooks"]


class ServiceHooks:
    def __init__(
        self,
        services: Sequence[ModelService],
        url: str,
        hub_reached: Callable[[], bool] | None = None,
    ) -> None:
        """`hub_reached`: the fleet link is connected (None when the agent has no link)."""
        for wildcard in ("//0.0.0.0:", "//[::]:"):  # reach our own wildcard bind on loopback
            url = url.replace(wildcard, "//127.0.0.1:")
        self._services = services
        launched = launched_slot()
        self._launched = launched
        self._readiness = Readiness(
            services, url, hub_required=self._trial_needs_hub, hub_reached=hub_reached
        )
        self._switch = SwitchWatcher(*launched) if launched and not handed_down() else None

    def start(self) -> None:
        """Call right before the server starts accepting. On a handed-down socket this
        waits for the models, so nothing is accepted that only a loading model would
        answer; a model that fails to load ends the process before it took a request."""
        if handed_down():
            for service in self._services:
                service.load()  # here, before accepting; the server's own load skips it
                if service.error is not None:
                    raise SystemExit(
                        f"model {service.name} failed to load: {service.error}; this agent "
                        "takes no request (the launcher keeps or restores the previous slot)"
                    )
        self._readiness.start()
        if self._switch is not None:
            self._switch.start()

    def stop(self) -> None:
        self._readiness.stop()
        if self._switch is not None:
            self._switch.stop()

    def _trial_needs_hub(self) -> bool:
        """This start is a trial that must reach the hub (its predecessor was online)."""
        if self._launched is None:
            return False
        root, slot = self._launched
        try:
            state = load_state(root)
        except LauncherError:
            return False
        return state.trial == slot and state.trial_needs_hub

    @property
    def switching(self) -> bool:
        """The API drained for a switch: serve exits with RESTART_EXIT."""
        return self._switch is not None and self._switch.requested.is_set()
