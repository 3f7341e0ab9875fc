"""Tell the service manager (systemd, or the launcher during an A/B switch) when the agent
really serves: its model is loaded and its own HTTP port answers, and, on a trial start
whose previous agent was online, its link reaches the hub (a build that lost its way to
the fleet must not commit: it could never be updated again). Then keep the watchdog fed
for as long as the port keeps answering."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import httpx

from edge_agent.installed.notify import Watchdog, notify, watchdog_interval

if TYPE_CHECKING:
    from edge_agent.runtime.service import ModelService

SELF_CHECK_TIMEOUT_SECONDS = 5.0


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=SELF_CHECK_TIMEOUT_SECONDS).status_code == 200
    except httpx.HTTPError:
        return False


class Readiness:
    """Started beside the HTTP server; sends READY=1 once, then pings the watchdog."""

    def __init__(
        self,
        services: Sequence[ModelService],
        url: str,
        *,
        hub_required: Callable[[], bool] = lambda: False,
        hub_reached: Callable[[], bool] | None = None,
    ) -> None:
        """`hub_required()`: this start must reach the hub before READY=1;
        `hub_reached()`: the fleet link is connected (None: this agent has no link)."""
        self._services = services
        self._url = url
        self._hub_required = hub_required
        self._hub_reached = hub_reached
        self._stopped = threading.Event()
        self._watchdog: Watchdog | None = None
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._watchdog is not None:
            self._watchdog.stop()

    def _run(self) -> None:
        for service in self._services:
            while not service.wait_loaded(1.0):
                if self._stopped.is_set():
                    return
            if service.error is not None:
                # No READY: systemd's start timeout or the launcher's health deadline acts.
                notify(f"STATUS=model {service.name} failed to load: {service.error}")
                return
        while not answers(self._url):
            if self._stopped.wait(0.2):
                return
        if self._hub_required():
            notify("STATUS=serving; the health check waits to reach the hub")
            while self._hub_reached is None or not self._hub_reached():
                if self._stopped.wait(0.2):
                    return
        names = ", ".join(s.name for s in self._services)
        notify(f"READY=1\nSTATUS=serving {names} at {self._url}/v1")
        interval = watchdog_interval()
        if interval is not None and not self._stopped.is_set():
            self._watchdog = Watchdog(interval, self._healthy)
            self._watchdog.start()

    def _healthy(self) -> bool:
        return all(s.ready for s in self._services) and answers(self._url)
