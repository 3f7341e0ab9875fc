"""The hub's desired-state rounds (hub.fleet.publish_loop): periodic, at once when woken,
never two at a time, and a failed round does not end them."""

from __future__ import annotations

import threading
import time

from hub.fleet.publish_loop import PublishLoop

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


def wait_until(condition: object, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_a_round_at_start_then_one_per_wake_not_per_tick() -> None:
    rounds = Rounds()
    loop = PublishLoop(rounds, LONG_S)
    loop.start()
    try:
        assert wait_until(lambda: len(rounds.started) == 1), "no round at start"
        woken = time.monotonic()
        loop.wake()
        assert wait_until(lambda: len(rounds.started) == 2), "a wake ran no round"
        assert rounds.started[1] - woken < 1.0
    finally:
        loop.stop()


def test_periodic_rounds_run_without_wakes() -> None:
    rounds = Rounds()
    loop = PublishLoop(rounds, 0.05)
    loop.start()
    try:
        assert wait_until(lambda: len(rounds.started) >= 4)
    finally:
        loop.stop()


def test_wakes_during_a_round_fold_into_one_next_round_never_two_at_once() -> None:
    rounds = Rounds()
    rounds.hold.clear()
    loop = PublishLoop(rounds, LONG_S)
    loop.start()
    try:
        assert wait_until(lambda: rounds.running == 1)
        for _ in range(20):  # a driver committing chunk after chunk during one round
            loop.wake()
        rounds.hold.set()
        assert wait_until(lambda: len(rounds.started) == 2)
        time.sleep(0.2)
        assert len(rounds.started) == 2, "each wake ran a round of its own"
        assert rounds.most_at_once == 1
    finally:
        loop.stop()


def test_flush_waits_for_a_round_that_began_after_it() -> None:
    rounds = Rounds()
    rounds.hold.clear()
    loop = PublishLoop(rounds, LONG_S)
    loop.start()
    try:
        assert wait_until(lambda: rounds.running == 1)  # a round under way: too early
        done: list[bool] = []
        flusher = threading.Thread(target=lambda: done.append(loop.flush(10)))
        flusher.start()
        time.sleep(0.1)
        rounds.passes.release()  # the early round ends; the next one is held
        assert wait_until(lambda: len(rounds.started) == 2 and rounds.running == 1)
        time.sleep(0.1)
        assert done == [], "the flush ended with a round that began before it"
        rounds.passes.release()
        flusher.join(10)
        assert done == [True]
    finally:
        rounds.hold.set()
        loop.stop()


def test_flush_says_so_at_its_timeout() -> None:
    rounds = Rounds()
    rounds.hold.clear()
    loop = PublishLoop(rounds, LONG_S)
    loop.start()
    try:
        assert loop.flush(0.2) is False
    finally:
        rounds.hold.set()
        loop.stop()


def test_a_failed_round_does_not_end_the_rounds() -> None:
    rounds = Rounds()
    rounds.fail = True
    loop = PublishLoop(rounds, LONG_S)
    loop.start()
    try:
        assert wait_until(lambda: len(rounds.started) == 1)
        assert loop.flush(5), "the failed round ended the loop"
        rounds.fail = False
        assert loop.flush(5)
    finally:
        loop.stop()


def test_stop_ends_the_thread() -> None:
    rounds = Rounds()
    loop = PublishLoop(rounds, LONG_S)
    loop.start()
    loop.stop()
    count = len(rounds.started)
    loop.wake()
    time.sleep(0.1)
    assert len(rounds.started) == count
    assert not any(t.name == "hub-desired" and t.is_alive() for t in threading.enumerate())
