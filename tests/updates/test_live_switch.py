"""The running API switches to a newly activated version without failing a request."""

from __future__ import annotations

import threading
import time

import httpx

from edge_agent.config import ApiConfig
from edge_agent.runtime import RuntimeSettings, SchedulerLimits
from edge_agent.runtime.service import ModelService
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


def test_no_switch_while_the_new_version_is_not_yet_healthy(fleet: Fleet) -> None:
    fleet.update()
    service = make_service(fleet)
    service.load()
    services = {"tiny": service}
    settled = False
    watcher = ActiveWatcher(
        services, "tiny", lambda: make_service(fleet), 1, settled=lambda: settled
    )
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()
    assert watcher.poll() is False  # pointer moved, update not committed: keep serving
    settled = True
    assert watcher.poll() is True
    assert str(services["tiny"].loaded_from).endswith("/1.1.0")
    services["tiny"].stop()
    service.stop()
