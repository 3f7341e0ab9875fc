"""The hub's desired-state rounds (hub.fleet.publish_loop): periodic, at once when woken,
never two at a time, and a failed round does not end them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hub.fleet.publish_loop import PublishLoop
from tests.fleet.processes import wait_for

LONG_S = 3600.0  # a tick that never comes within a test: only wakes run rounds


class Rounds:
    """A publish round that records when it ran and can be held open or made to fail."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.running = 0
        self.most_at_once = 0
        self.hold = threading.Event()  # cleared: every round waits for it, or for a pass
        self.hold.set()
        self.passes = threading.Semaphore(0)  # each lets one held round end
        self.fail = False
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.started.append(time.monotonic())
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            deadline = time.monotonic() + 10
            while not self.hold.is_set() and time.monotonic() < deadline:
                if self.passes.acquire(timeout=0.01):
                    break
            if self.fail:
                raise RuntimeError("the database is away")
            return 0
        finally:
            with self._lock:
                self.running -= 1


@contextmanager
def running(rounds: Rounds, interval_s: float = LONG_S) -> Iterator[PublishLoop]:
    """A started loop over `rounds`; at the end any held round is let go and it stops."""
    loop = PublishLoop(rounds, interval_s)
    loop.start()
    try:
        yield loop
    finally:
        rounds.hold.set()
        loop.stop()


def test_a_round_at_start_then_one_per_wake_not_per_tick() -> None:
    rounds = Rounds()
    with running(rounds) as loop:
        wait_for(lambda: len(rounds.started) == 1, "a round at start", 5)
        woken = time.monotonic()
        loop.wake()
        wait_for(lambda: len(rounds.started) == 2, "a round after the wake", 5)
        assert rounds.started[1] - woken < 1.0


def test_periodic_rounds_run_without_wakes() -> None:
    rounds = Rounds()
    with running(rounds, interval_s=0.05):
        wait_for(lambda: len(rounds.started) >= 4, "four periodic rounds", 5)


def test_wakes_during_a_round_fold_into_one_next_round_never_two_at_once() -> None:
    rounds = Rounds()
    rounds.hold.clear()
    with running(rounds) as loop:
        wait_for(lambda: rounds.running == 1, "the first round", 5)
        for _ in range(20):  # a driver committing chunk after chunk during one round
            loop.wake()
        rounds.hold.set()
        wait_for(lambda: len(rounds.started) == 2, "the round the wakes asked for", 5)
        time.sleep(0.2)
        assert len(rounds.started) == 2, "each wake ran a round of its own"
        assert rounds.most_at_once == 1


def test_flush_waits_for_a_round_that_began_after_it() -> None:
    rounds = Rounds()
    rounds.hold.clear()
    with running(rounds) as loop:
        wait_for(lambda: rounds.running == 1, "a round under way: too early", 5)
        done: list[bool] = []
        flusher = threading.Thread(target=lambda: done.append(loop.flush(10)))
        flusher.start()
        time.sleep(0.1)
        rounds.passes.release()  # the early round ends; the next one is held
        wait_for(lambda: len(rounds.started) == 2 and rounds.running == 1, "the flushed round", 5)
        time.sleep(0.1)
        assert done == [], "the flush ended with a round that began before it"
        rounds.passes.release()
        flusher.join(10)
        assert done == [True]


def test_flush_says_so_at_its_timeout() -> None:
    rounds = Rounds()
    rounds.hold.clear()
    with running(rounds) as loop:
        assert loop.flush(0.2) is False


def test_a_failed_round_does_not_end_the_rounds() -> None:
    rounds = Rounds()
    rounds.fail = True
    with running(rounds) as loop:
        wait_for(lambda: len(rounds.started) == 1, "the failing round", 5)
        assert loop.flush(5), "the failed round ended the loop"
        rounds.fail = False
        assert loop.flush(5)


def test_stop_ends_the_thread() -> None:
    rounds = Rounds()
    with running(rounds) as loop:
        pass
    count = len(rounds.started)
    loop.wake()
    time.sleep(0.1)
    assert len(rounds.started) == count
    assert not any(t.name == "hub-desired" and t.is_alive() for t in threading.enumerate())
