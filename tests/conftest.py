"""Shared fixtures: the real tiny model, loaded services, and a live API server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import uvicorn

from edge_agent.api import create_app
from edge_agent.config import ApiConfig
from edge_agent.runtime import Finished, RuntimeSettings, SchedulerLimits, Submission
from edge_agent.runtime.service import ModelService
from hub.registry import synthetic, synthetic_adapter
from tests.ports import free_port


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random-weight model, built once and cached across runs."""
    return synthetic.build(synthetic.RECIPES["tiny"])


@pytest.fixture(scope="session")
def tiny_lora_base_dir() -> Path:
    """The tiny model built to accept LoRA adapters on its attention projections."""
    return synthetic_adapter.build_base(
        synthetic_adapter.AdapterBaseRecipe(model=synthetic.RECIPES["tiny"])
    )


@pytest.fixture(scope="session")
def peft_adapters() -> dict[str, Path]:
    """Two random-weight PEFT LoRA adapters on the tiny model's shape, by name."""
    tiny = synthetic.RECIPES["tiny"]
    return {
        name: synthetic_adapter.build_adapter(
            synthetic_adapter.AdapterRecipe(model=tiny, seed=seed)
        )
        for name, seed in (("contracts-fr", 1), ("triage-en", 2))
    }


class FinishLog:
    """Records how every submission ended (the scheduler's on_finish hook)."""

    def __init__(self) -> None:
        self.items: list[tuple[Submission, Finished]] = []
        self._cond = threading.Condition()

    def __call__(self, sub: Submission, done: Finished) -> None:
        with self._cond:
            self.items.append((sub, done))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Finished]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.items) >= count, timeout)
            return [done for _sub, done in self.items]


def make_service(
    model_dir: Path, finish_log: FinishLog | None = None, **limits: int
) -> ModelService:
    service = ModelService(
        "tiny",
        model_dir,
        RuntimeSettings(),
        SchedulerLimits(**limits),
        on_finish=finish_log,
    )
    service.load()
    assert service.error is None, service.error
    return service


@pytest.fixture
def finish_log() -> FinishLog:
    return FinishLog()


class ServerThread:
    """Any ASGI app on a free loopback port, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.app = app
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class LiveServer(ServerThread):
    """The agent's API over the given model services."""

    def __init__(self, services: list[ModelService], api: ApiConfig) -> None:
        super().__init__(create_app(api, services, load=False))


@pytest.fixture
def serve(tiny_model_dir: Path, finish_log: FinishLog) -> Iterator[object]:
    """Factory: start a live server over the tiny model with the given limits and API config."""
    started: list[tuple[LiveServer, ModelService]] = []

    def start(api: ApiConfig | None = None, **limits: int) -> LiveServer:
        service = make_service(tiny_model_dir, finish_log, **limits)
        server = LiveServer([service], api or ApiConfig()).__enter__()
        started.append((server, service))
        return server

    yield start
    for server, service in started:
        server.__exit__()
        service.stop()
