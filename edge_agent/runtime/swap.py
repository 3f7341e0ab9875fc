"""Follow an installed model's `active` pointer and switch the served version live.

The switch waits until the update that moved the pointer has committed (its health
check passed), so a version that is about to be rolled back is never served. The new
version then loads beside the old one; once it is ready, new requests go to it, and the
old one finishes the requests it already has before it stops. No request fails
because of a switch. A version that fails to load is not switched to: the old one goes
on serving, and the failure is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path

from edge_agent.runtime.service import ModelService

log = logging.getLogger(__name__)

# A request may have looked up the old service just before the switch; it still gets
# this long to submit before the old service starts draining.
GRACE_SECONDS = 1.0


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

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.poll()
            except Exception:  # keep watching: the next poll may succeed
                log.exception("checking %s for a new active version failed", self.name)

    def poll(self) -> bool:
        """Switch if the pointer moved; returns whether a switch happened."""
        current = self.services[self.name]
        if not current.ready or current.loaded_from is None:
            return False
        target: Path = current.path.resolve()
        if target == current.loaded_from or not self.settled():
            return False
        fresh = self.make_service()
        fresh.arrivals = current.arrivals
        fresh.load()
        if not fresh.ready:
            log.error("not switching %s to %s: %s", self.name, target, fresh.error)
            return False
        self.services[self.name] = fresh
        log.info("now serving %s from %s", self.name, fresh.loaded_from)
        threading.Thread(target=_retire, args=(current,), daemon=True).start()
        return True


def _retire(service: ModelService) -> None:
    time.sleep(GRACE_SECONDS)
    service.drain()
