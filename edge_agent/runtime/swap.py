"""Follow an installed model's `active` pointer and switch the served version live.

The switch waits until the update that moved the pointer has committed (its health
check passed), so a version that is about to be rolled back is never served. The new
version then loads beside the old one; once it is ready, and the pointer still names it,
new requests go to it. The old one is retired, not timed out: it stops taking work only
after every request that arrived before the switch (and so may have looked it up) has
been submitted or has ended, then finishes the requests it holds and stops. No request
fails because of a switch. A version that fails to load is not switched to: the old one
goes on serving, and the failure is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from edge_agent.runtime.service import ModelService

log = logging.getLogger(__name__)

# The longest a retired version waits for earlier arrivals to be submitted (a client that
# stalls mid-body must not keep two versions in memory for ever); its own requests then
# get the scheduler's drain time.
RETIRE_WAIT_SECONDS = 300.0


@runtime_checkable
class ArrivalTickets(Protocol):
    """What the server tells of requests on their way to a scheduler (api.Arrivals)."""

    def latest(self) -> int: ...

    def wait_for_earlier(self, ticket: int, timeout_seconds: float) -> bool: ...


class ActiveWatcher:
    def __init__(
        self,
        services: MutableMapping[str, ModelService],
        name: str,
        make_service: Callable[[], ModelService],
        interval_seconds: float,
        *,
        settled: Callable[[], bool] = lambda: True,
    ) -> None:
        self.services = services
        self.name = name
        self.make_service = make_service
        self.settled = settled
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)
        self._retiring: list[threading.Thread] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_seconds: float | None = None) -> None:
        """Stop watching and wait for the watcher and every retiring version to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_seconds)
        for thread in self._retiring:
            thread.join(timeout_seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.poll()
            except Exception:  # keep watching: the next poll may succeed
                log.exception("checking %s for a new active version failed", self.name)

    def _wanted(self, current: ModelService) -> Path | None:
        """The committed version the pointer names, when it is not the one served."""
        target = current.path.resolve()
        if target == current.loaded_from or not self.settled():
            return None
        return target

    def poll(self) -> bool:
        """Switch if the pointer moved; returns whether a switch happened."""
        current = self.services.get(self.name)
        if current is None:  # not loaded now: its next load reads the pointer afresh
            return False
        if not current.ready or current.loaded_from is None:
            return False
        target = self._wanted(current)
        if target is None:
            return False
        fresh = self.make_service()
        fresh.arrivals = current.arrivals
        fresh.load()
        if not fresh.ready:
            log.error("not switching %s to %s: %s", self.name, target, fresh.error)
            return False
        if self._wanted(current) != fresh.loaded_from:
            # Another update moved the pointer while this one loaded, and may not be healthy
            # yet: serve nothing it has not committed. The next poll starts again.
            fresh.stop()
            log.info("not switching %s to %s: the active version moved", self.name, target)
            return False
        self.services[self.name] = fresh
        log.info("now serving %s from %s", self.name, fresh.loaded_from)
        # Taken after the switch: later arrivals look up the new version.
        arrivals = current.arrivals
        ticket = arrivals.latest() if isinstance(arrivals, ArrivalTickets) else 0
        retire = threading.Thread(
            target=_retire, args=(current, ticket), name=f"retire-{self.name}", daemon=True
        )
        self._retiring = [t for t in self._retiring if t.is_alive()] + [retire]
        retire.start()
        return True


def _retire(service: ModelService, ticket: int) -> None:
    arrivals = service.arrivals
    if isinstance(arrivals, ArrivalTickets) and not arrivals.wait_for_earlier(
        ticket, RETIRE_WAIT_SECONDS
    ):
        log.warning("retiring %s: requests that arrived before the switch still wait", service.name)
    service.drain()
