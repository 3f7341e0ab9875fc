"""What `edge-agent serve` does as an installed service: tell its manager when it serves
(READY=1, watchdog pings) and leave for a new slot when the launcher has one on trial.

Two ways to switch. Where the launcher holds the API socket (`--listen`), it starts the
new slot beside this agent and sends this one SIGTERM once the new one is ready: this
agent drains like any stop, and a new agent accepts nothing before its model is loaded.
Without a held socket this agent drains itself and exits RESTART_EXIT for the launcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_agent.installed.handoff import handed_down
from edge_agent.installed.launcher import RESTART_EXIT
from edge_agent.installed.readiness import Readiness
from edge_agent.installed.switch import SwitchWatcher, launched_slot

if TYPE_CHECKING:
    from edge_agent.runtime.service import ModelService

__all__ = ["RESTART_EXIT", "ServiceHooks"]


class ServiceHooks:
    def __init__(self, services: Sequence[ModelService], url: str) -> None:
        for wildcard in ("//0.0.0.0:", "//[::]:"):  # reach our own wildcard bind on loopback
            url = url.replace(wildcard, "//127.0.0.1:")
        self._services = services
        self._readiness = Readiness(services, url)
        launched = launched_slot()
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

    @property
    def switching(self) -> bool:
        """The API drained for a switch: serve exits with RESTART_EXIT."""
        return self._switch is not None and self._switch.requested.is_set()
