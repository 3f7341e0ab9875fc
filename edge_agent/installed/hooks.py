"""What `edge-agent serve` does as an installed service: tell its manager when it serves
(READY=1, watchdog pings) and leave for a new slot when the launcher has one on trial."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

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
        self._readiness = Readiness(services, url)
        launched = launched_slot()
        self._switch = SwitchWatcher(*launched) if launched else None

    def start(self) -> None:
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
