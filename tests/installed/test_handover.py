"""A switch with the launcher holding the API socket (--listen): the new agent starts
beside the old one on the same socket, accepts only once its model is loaded, and the old
one drains. Under load from several clients, every request across the switch is a 200."""

from __future__ import annotations

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
    Launched,
    launch,
    make_slot,
    state,
    wait_for,
)  # fmt: skip

pytestmark = pytest.mark.timeout(240)
CLIENTS = 4


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "opt"
    make_slot(root, "a", GOOD, "0.1.0")
    save_state(root, SlotState(committed="a"))
    return root


@pytest.fixture
def running(root: Path, tiny_model_dir: Path, tmp_path: Path) -> Iterator[Launched]:
    launched = launch(root, tiny_model_dir, tmp_path / "data", None, deadline=20,
                      hold_socket=True)  # fmt: skip
    launched.wait_ready()
    yield launched
    launched.stop()


BODY = {"model": "tiny", "prompt": "def main():", "max_tokens": 8}


class Load:
    """CLIENTS threads sending completions until stopped: half open a connection per
    request, half keep one alive (as the openai client does). Every outcome is kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[int | str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i % 2 == 0,)) for i in range(CLIENTS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, keep_alive: bool) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    if keep_alive:
                        answer = client.post(f"{self.url}/v1/completions", json=BODY)
                    else:
                        answer = httpx.post(f"{self.url}/v1/completions", json=BODY, timeout=60)
                    self.results.append(answer.status_code)
                except httpx.HTTPError as exc:
                    self.results.append(f"{type(exc).__name__}: {exc}")

    def failures(self) -> list[int | str]:
        return [r for r in self.results if r != 200]


def test_every_request_across_a_switch_under_load_is_answered_200(
    running: Launched, root: Path
) -> None:
    make_slot(root, "b", GOOD, "0.2.0")
    with Load(running.url) as load:
        time.sleep(2)
        before = len(load.results)
        request_trial(root, "b", "0.2.0")
        wait_for(lambda: state(root)["committed"] == "b", 60, "slot b committed")
        wait_for(lambda: running.serving_slot() == "b" and len(list_children(running)) == 1,
                 40, "the old agent drained and left")  # fmt: skip
        time.sleep(2)
    assert before > 0
    assert len(load.results) > before + CLIENTS, "no request ran across the switch"
    assert load.failures() == [], load.failures()[:10]
    assert state(root)["last_result"]["ok"] is True  # type: ignore[index]


@pytest.mark.parametrize("broken", [CRASHES, HANGS], ids=["crashes", "hangs"])
def test_a_broken_release_takes_no_request_and_the_old_agent_serves_on(
    running: Launched, root: Path, broken: str
) -> None:
    make_slot(root, "b", broken, "0.2.0")
    with Load(running.url) as load:
        time.sleep(1)
        request_trial(root, "b", "0.2.0")
        wait_for(lambda: state(root)["last_result"] is not None, 40, "trial finished")
        time.sleep(1)
    found = state(root)
    assert found["committed"] == "a" and found["last_result"]["ok"] is False  # type: ignore[index]
    assert load.failures() == [], load.failures()[:10]
    assert running.serving_slot() == "a"


def list_children(running: Launched) -> list[int]:
    from tests.installed.fleet_slots import children_of

    return list(children_of(running.proc.pid))


def test_a_trial_asked_for_online_must_reach_the_hub_or_it_falls_back(
    running: Launched, root: Path
) -> None:
    """The previous agent was online; the new build serves its model but has no way to the
    hub (here: no fleet link at all), so it must not commit: it could never be updated."""
    make_slot(root, "b", GOOD, "0.2.0")
    with Load(running.url) as load:
        request_trial(root, "b", "0.2.0", needs_hub=True)
        took = wait_for(lambda: state(root)["last_result"] is not None, 60, "trial finished")
    found = state(root)
    assert found["committed"] == "a" and found["last_result"]["ok"] is False  # type: ignore[index]
    assert "reach the hub" in found["last_result"]["reason"]  # type: ignore[index]
    assert took < 20 + 10  # the deadline is the launcher's --deadline
    assert load.failures() == [], load.failures()[:10]
    assert running.serving_slot() == "a"
