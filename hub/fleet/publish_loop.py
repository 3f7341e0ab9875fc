"""Desired-state rounds on a thread of their own: one every `interval_s`, and one at once
when woken. The rollout driver wakes it after each chunk of signed states it commits
(`Driver.on_signed`), so a wave's first states are on the broker while the driver still
signs the rest, instead of waiting for the next tick (bench/rollout.py measures this).

Rounds never overlap, and wakes that come during a round fold into one next round: a
round publishes everything pending when it starts. Not an apscheduler job: running one at
once while it runs is skipped (with a warning), and a wave's chunks are committed while a
round is under way, so they would wait for the next tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PublishLoop:
    def __init__(
        self, publish_round: Callable[[], object], interval_s: float, name: str = "hub-desired"
    ) -> None:
        self._round = publish_round
        self._interval_s = interval_s
        self._woken = threading.Event()
        self._woken.set()  # the first round runs at start
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._started = 0  # rounds begun
        self._finished = 0  # rounds ended, failed ones included
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Run a round now, or right after the one under way."""
        self._woken.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the round under way, if any."""
        self._stopping.set()
        self._woken.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def flush(self, timeout_s: float) -> bool:
        """Wake the loop and wait until a round that began after this call has ended: it
        saw every state committed before the call. False at the timeout."""
        with self._progress:
            wanted = self._started + 1
            self._woken.set()
            return self._progress.wait_for(lambda: self._finished >= wanted, timeout_s)

    def _run(self) -> None:
        while True:
            self._woken.wait(self._interval_s)
            self._woken.clear()  # before the round: a wake during it asks for another
            if self._stopping.is_set():
                return
            with self._progress:
                self._started += 1
            try:
                self._round()
            except Exception:  # the database or broker may be back by the next round
                log.exception("a desired-state round failed; the next one tries again")
            finally:
                with self._progress:
                    self._finished += 1
                    self._progress.notify_all()
