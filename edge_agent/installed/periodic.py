"""A daemon thread that does one check every `interval` seconds until stopped: the shape
of the watchdog's pings (notify) and of the A/B switch watcher (switch)."""

from __future__ import annotations

import threading


class Periodic:
    """Calls `_tick()` every `interval` seconds on its own thread; `_tick` returning False
    ends the thread."""

    def __init__(self, interval: float, name: str) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if not self._tick():
                return

    def _tick(self) -> bool:
        raise NotImplementedError
