"""The running API switches to a newly activated version without failing a request."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from edge_agent.api.arrivals import Arrivals
from edge_agent.config import ApiConfig
from edge_agent.runtime import FinishReason, NotReady, RuntimeSettings, SchedulerLimits
from edge_agent.runtime.sampling import SamplingParams
from edge_agent.runtime.scheduler import Finished
from edge_agent.runtime.service import ModelService
from edge_agent.runtime.sinks import QueueSink
from edge_agent.runtime.swap import ActiveWatcher
from edge_agent.updates.machine import Phase
from tests.conftest import LiveServer
from tests.updates.conftest import Fleet

BODY = {"model": "tiny", "prompt": "x", "max_tokens": 40, "ignore_eos": True, "stream": True}


def make_service(fleet: Fleet) -> ModelService:
    active = fleet.store.models_dir / "tiny" / "active"
    return ModelService("tiny", active, RuntimeSettings(), SchedulerLimits())


def test_switch_under_load_fails_no_request(fleet: Fleet) -> None:
    fleet.update()
    service = make_service(fleet)
    service.load()
    with LiveServer([service], ApiConfig()) as server:
        services = server.app.state.services
        state = fleet.manager().state
        watcher = ActiveWatcher(
            services,
            "tiny",
            lambda: make_service(fleet),
            0.05,
            settled=lambda: state.load().phase is Phase.IDLE,
        )
        watcher.start()
        outcomes: list[str] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not stop.is_set():
                    with http.stream("POST", "/v1/completions", json=BODY) as response:
                        lines = list(response.iter_lines())
                    ok = (
                        response.status_code == 200
                        and "data: [DONE]" in lines
                        and not any(line.startswith('data: {"error"') for line in lines)
                    )
                    outcomes.append("ok" if ok else f"{response.status_code}: {lines[-4:]}")

        clients = [threading.Thread(target=client) for _ in range(3)]
        for thread in clients:
            thread.start()
        time.sleep(0.5)
        fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
        fleet.update()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            path = httpx.get(server.url + "/readyz").json()["models"][0]["path"]
            if path.endswith("/1.1.0"):
                break
            time.sleep(0.05)
        time.sleep(1.5)  # requests keep flowing across the switch and the old one's drain
        stop.set()
        for thread in clients:
            thread.join(30)
        watcher.stop()
        assert path.endswith("/1.1.0")
        assert outcomes and set(outcomes) == {"ok"}, [o for o in outcomes if o != "ok"][:3]
        services["tiny"].stop()


def test_no_switch_until_the_update_has_settled(fleet: Fleet) -> None:
    # `settled` stands for the update machine's verdict (IDLE once the new version passed
    # its health check and was committed): before that, nothing of the new version is
    # even loaded, and the old one keeps answering.
    fleet.update()
    service = make_service(fleet)
    service.load()
    services = {"tiny": service}
    settled = False
    built: list[ModelService] = []

    def build() -> ModelService:
        built.append(make_service(fleet))
        return built[-1]

    watcher = ActiveWatcher(services, "tiny", build, 1, settled=lambda: settled)
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()
    assert watcher.poll() is False  # pointer moved, update not committed: keep serving
    assert services["tiny"] is service and built == []
    assert str(service.loaded_from).endswith("/1.0.0")
    sink = QueueSink()
    service.submit(service.require()[0].encode("x"), SamplingParams(max_tokens=4), sink)
    done = next(event for event in sink if isinstance(event, Finished))
    assert done.reason is not FinishReason.CANCELLED and done.completion_tokens > 0
    settled = True
    assert watcher.poll() is True
    assert str(services["tiny"].loaded_from).endswith("/1.1.0")
    services["tiny"].stop()
    service.stop()


def test_a_request_that_found_the_old_version_just_before_the_switch_runs_on_it(
    fleet: Fleet,
) -> None:
    # No timer: the old version waits for requests that arrived before the switch, however
    # long they take to submit (here longer than the one second a timer used to allow).
    fleet.update()
    arrivals = Arrivals()
    old = make_service(fleet)
    old.arrivals = arrivals
    old.load()
    services = {"tiny": old}
    watcher = ActiveWatcher(services, "tiny", lambda: make_service(fleet), 3600)  # by hand
    scope: dict[str, object] = {}
    arrivals.begin(scope)  # a request arrives ...
    found = services["tiny"]  # ... and looks up the version served now
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()
    assert watcher.poll() is True
    assert services["tiny"] is not found
    time.sleep(1.5)
    arrivals.end(scope)
    sink = QueueSink()
    found.submit(found.require()[0].encode("x"), SamplingParams(max_tokens=8), sink)
    arrivals.settle(scope)
    done = next(event for event in sink if isinstance(event, Finished))
    assert done.reason is not FinishReason.CANCELLED and done.completion_tokens > 0
    watcher.stop(30)  # joins the retiring thread: the old version has stopped
    with pytest.raises(NotReady):
        found.submit([5], SamplingParams(max_tokens=1), QueueSink())
    services["tiny"].stop()


def test_no_switch_to_a_version_that_moved_on_while_it_loaded(fleet: Fleet) -> None:
    fleet.update()
    service = make_service(fleet)
    service.load()
    services = {"tiny": service}
    healthy = True

    def load_while_a_newer_update_activates() -> ModelService:
        nonlocal healthy
        fresh = make_service(fleet)
        fleet.repo.publish(fleet.variant("v3", top_k=9), "tiny", "1.2.0")
        fleet.update()  # 1.2.0 is active now, but say its health check has not passed yet
        healthy = False
        return fresh

    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()
    watcher = ActiveWatcher(
        services, "tiny", load_while_a_newer_update_activates, 3600, settled=lambda: healthy
    )
    assert watcher.poll() is False
    assert services["tiny"] is service  # neither 1.1.0 (moved on) nor 1.2.0 (not healthy)
    service.stop()
