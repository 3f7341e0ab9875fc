"""A/B switches on real processes: the launcher, real agents serving the tiny model, and
slots that crash or hang like a broken build. kill -9 at each step of a switch must leave
an agent that serves."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_agent.installed.launcher import SlotState, request_trial, save_state
from tests.installed.fleet_slots import (
    CRASHES,
    GOOD,
    HANGS,
    SLOW_THEN_GOOD,
    Launched,
    Notifications,
    launch,
    make_slot,
    state,
    wait_for,
)  # fmt: skip

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def notify() -> Iterator[Notifications]:
    made = Notifications.open()
    yield made
    made.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "opt"
    make_slot(root, "a", GOOD, "0.1.0")
    save_state(root, SlotState(committed="a"))
    return root


@pytest.fixture
def running(root: Path, tiny_model_dir: Path, tmp_path: Path,
            notify: Notifications) -> Iterator[Launched]:  # fmt: skip
    launched = launch(root, tiny_model_dir, tmp_path / "data", notify, deadline=15)
    launched.wait_ready()
    yield launched
    launched.stop()


def _generate(url: str) -> int:
    body = {"model": "tiny", "prompt": "def main():", "max_tokens": 4}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code


def test_ready_reaches_the_service_manager_once_the_model_serves(
    running: Launched, notify: Notifications
) -> None:
    wait_for(lambda: notify.count("READY=1") >= 1, 10, "READY=1 relayed")
    assert running.serving_slot() == "a"


def test_a_good_release_is_switched_to_and_committed_while_requests_finish(
    running: Launched, root: Path
) -> None:
    make_slot(root, "b", GOOD, "0.2.0")
    results: list[int | str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                results.append(_generate(running.url))
            except httpx.ConnectError:
                results.append("refused")  # between the old agent and the new one
            except httpx.HTTPError as exc:
                results.append(f"cut: {exc!r}")  # a request lost mid-flight

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(1)
    request_trial(root, "b", "0.2.0")
    wait_for(lambda: state(root)["committed"] == "b", 60, "slot b committed")
    running.wait_ready()
    time.sleep(1)
    stop.set()
    worker.join(60)
    assert running.serving_slot() == "b"
    assert state(root)["last_result"]["ok"] is True  # type: ignore[index]
    assert not [r for r in results if isinstance(r, str) and r.startswith("cut")], results
    answered = [r for r in results if isinstance(r, int)]
    # Known gap (bench/README.md): while the new agent loads, it answers 503 (Retry-After)
    # and between the two processes a connection is refused; no request is cut mid-flight.
    assert answered.count(200) > 0 and set(answered) <= {200, 503}, answered


@pytest.mark.parametrize("broken", [CRASHES, HANGS], ids=["crashes", "hangs"])
def test_a_broken_release_falls_back_within_the_deadline_and_says_so(
    running: Launched, root: Path, broken: str
) -> None:
    make_slot(root, "b", broken, "0.2.0")
    request_trial(root, "b", "0.2.0")
    took = wait_for(lambda: state(root)["last_result"] is not None, 40, "trial finished")
    assert took < 15 + 10  # the deadline, plus the old agent's drain
    found = state(root)
    assert found["committed"] == "a"
    assert found["trial"] is None
    assert found["last_result"]["ok"] is False  # type: ignore[index]
    assert "0.2.0" in found["failed_versions"]  # type: ignore[operator]
    running.wait_ready(60)
    assert running.serving_slot() == "a"
    assert _generate(running.url) == 200


def test_kill_9_of_the_old_agent_after_the_switch_was_asked_still_switches(
    running: Launched, root: Path
) -> None:
    make_slot(root, "b", GOOD, "0.2.0")
    old = running.agent_pid()
    state_now = state(root)
    save_state(root, SlotState(committed="a", trial="b", trial_version="0.2.0",
                               failed_versions=list(state_now["failed_versions"])))  # type: ignore[arg-type]  # fmt: skip
    os.kill(old, signal.SIGKILL)  # before it could drain
    wait_for(lambda: state(root)["committed"] == "b", 60, "slot b committed")
    running.wait_ready()
    assert running.serving_slot() == "b"


def test_kill_9_of_the_new_agent_before_it_served_falls_back(running: Launched, root: Path) -> None:
    make_slot(root, "b", SLOW_THEN_GOOD, "0.2.0")
    request_trial(root, "b", "0.2.0")
    wait_for(lambda: running.serving_slot() == "b", 30, "slot b started")
    os.kill(running.agent_pid(), signal.SIGKILL)
    wait_for(lambda: state(root)["last_result"] is not None, 30, "trial finished")
    assert state(root)["committed"] == "a"
    running.wait_ready()
    assert running.serving_slot() == "a"


def test_kill_9_of_the_launcher_mid_trial_falls_back_on_the_next_start(
    root: Path, tiny_model_dir: Path, tmp_path: Path, notify: Notifications
) -> None:
    make_slot(root, "b", SLOW_THEN_GOOD, "0.2.0")
    request_trial(root, "b", "0.2.0")
    first = launch(root, tiny_model_dir, tmp_path / "data", notify, deadline=15)
    wait_for(lambda: state(root)["trial_boots"] == 1, 20, "trial started")
    first.proc.kill()  # the launcher (and with it, its child) dies mid-trial
    first.proc.wait()
    again = launch(root, tiny_model_dir, tmp_path / "data", notify, port=first.port)
    try:
        again.wait_ready()
        found = state(root)
        assert found["committed"] == "a" and found["trial"] is None
        assert found["last_result"]["ok"] is False  # type: ignore[index]
        assert again.serving_slot() == "a"
    finally:
        again.stop()


def test_kill_9_of_the_launcher_after_the_commit_keeps_the_new_slot(
    running: Launched, root: Path, tiny_model_dir: Path, tmp_path: Path,
    notify: Notifications,
) -> None:  # fmt: skip
    make_slot(root, "b", GOOD, "0.2.0")
    request_trial(root, "b", "0.2.0")
    wait_for(lambda: state(root)["committed"] == "b", 60, "slot b committed")
    running.proc.kill()
    running.proc.wait()
    again = launch(root, tiny_model_dir, tmp_path / "data", notify, port=running.port)
    try:
        again.wait_ready()
        assert again.serving_slot() == "b"
    finally:
        again.stop()
