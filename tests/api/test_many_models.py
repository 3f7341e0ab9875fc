"""Several models on one agent, through the official openai client: loaded on demand,
served side by side, evicted under a small memory budget, unloaded after keep-alive."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from edge_agent.api import create_app
from edge_agent.config import ApiConfig
from edge_agent.models import installed_models
from edge_agent.runtime import Event, Finished, RuntimeSettings, SamplingParams, SchedulerLimits
from edge_agent.runtime.encoder import Encoders
from edge_agent.runtime.pool import ModelPool, estimate_bytes
from edge_agent.runtime.service import ModelService
from hub.registry import synthetic_encoder
from tests.conftest import ServerThread

Start = Callable[..., ServerThread]


@pytest.fixture
def models_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """Two working models and one whose weights are damaged, as the store lays them out."""
    root = tmp_path / "models"
    for name in ("alpha", "beta", "broken"):
        shutil.copytree(tiny_model_dir, root / name)
    (root / "broken" / "model.onnx").write_bytes(b"not an onnx graph")
    return root


def _service(name: str, path: Path) -> ModelService:
    return ModelService(name, path, RuntimeSettings(), SchedulerLimits())


@pytest.fixture
def start(models_dir: Path) -> Iterator[Start]:
    servers: list[ServerThread] = []

    def start(budget_bytes: int = 2**30, keep_alive_seconds: float = 300.0) -> ServerThread:
        pool = ModelPool(
            discover=lambda: {ref.name: ref.path for ref in installed_models(models_dir)},
            make_service=_service,
            budget_bytes=budget_bytes,
            keep_alive_seconds=keep_alive_seconds,
            retry_after_seconds=7,
        )
        server = ServerThread(create_app(ApiConfig(), [], pool=pool)).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


def _client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _ask(client: openai.OpenAI, model: str, **extra: object) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=8,
        temperature=0,
        extra_body=extra or None,
    )
    assert reply.model == model
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    return reply.choices[0].message.content or ""


def _loaded(server: ServerThread) -> list[str]:
    body = httpx.get(f"{server.url}/v1/ps").json()
    return [row["model"] for row in body["data"]]


def test_every_installed_model_is_listed_with_its_install_time(
    start: Start, models_dir: Path
) -> None:
    server = start()
    cards = {m.id: m.created for m in _client(server).models.list()}
    assert cards == {
        name: int((models_dir / name).stat().st_mtime) for name in ("alpha", "beta", "broken")
    }
    assert _loaded(server) == []  # nothing loads until asked for


def test_two_models_answer_concurrently_on_one_agent(start: Start) -> None:
    server = start()
    client = _client(server)
    answers: dict[tuple[str, int], str] = {}
    errors: list[BaseException] = []

    def ask(model: str, index: int) -> None:
        try:
            answers[(model, index)] = _ask(client, model)
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [
        threading.Thread(target=ask, args=(model, i))
        for model in ("alpha", "beta")
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(answers) == 6
    # Same weights, greedy: each model answers alike, loaded once.
    assert len({answers[("alpha", i)] for i in range(3)}) == 1
    assert answers[("alpha", 0)] == answers[("beta", 0)]
    assert sorted(_loaded(server)) == ["alpha", "beta"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'edge_agent_model_generations_total{model="alpha",status="200"} 3.0' in metrics
    assert 'edge_agent_model_generations_total{model="beta",status="200"} 3.0' in metrics
    assert 'edge_agent_model_memory_bytes{model="beta"}' in metrics
    assert "edge_agent_model_loads_total 2.0" in metrics


def test_a_small_budget_evicts_the_least_recently_used(start: Start, models_dir: Path) -> None:
    one_model = estimate_bytes(models_dir / "alpha")
    server = start(budget_bytes=int(one_model * 1.5))
    client = _client(server)
    _ask(client, "alpha")
    assert _loaded(server) == ["alpha"]
    _ask(client, "beta")
    assert _loaded(server) == ["beta"]
    body = httpx.get(f"{server.url}/v1/ps").json()
    assert body["memory_used_bytes"] <= body["memory_budget_bytes"]
    _ask(client, "alpha")
    assert _loaded(server) == ["alpha"]
    assert "edge_agent_model_unloads_total 2.0" in httpx.get(f"{server.url}/metrics").text


class HeldConsumer:
    """A consumer that takes nothing until let go: the decode thread waits in `put`, so
    its model stays busy generating for exactly as long as the test needs (a streaming
    client could not: the tiny model finishes a long answer before the next request)."""

    def __init__(self) -> None:
        self.let_go = threading.Event()
        self.finished = threading.Event()  # its model is idle again from here

    def put(self, event: Event) -> None:
        self.let_go.wait(60)
        if isinstance(event, Finished):
            self.finished.set()

    def wait_taken(self, timeout_seconds: float) -> None:
        return


def test_no_room_while_the_loaded_model_is_busy_is_503_with_retry_after(
    start: Start, models_dir: Path
) -> None:
    server = start(budget_bytes=int(estimate_bytes(models_dir / "alpha") * 1.5))
    pool: ModelPool = server.app.state.pool
    alpha = pool.acquire("alpha")
    consumer = HeldConsumer()
    try:
        model, _ = alpha.require()
        params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
        alpha.submit(model.encode("go on"), params, consumer)
    finally:
        pool.release(alpha)  # queued: from here only its generation keeps alpha busy
    try:
        reply = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "beta", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert _loaded(server) == ["alpha"]  # the busy model was not unloaded under it
    finally:
        consumer.let_go.set()
    assert reply.status_code == 503, reply.text
    assert reply.headers["retry-after"] == "7"
    assert "does not fit the memory budget" in reply.json()["error"]["message"]
    assert consumer.finished.wait(30)
    _ask(_client(server), "beta")  # alpha is idle now: it makes room
    assert _loaded(server) == ["beta"]


def test_a_model_that_fails_to_load_does_not_disturb_the_others(start: Start) -> None:
    server = start()
    client = _client(server)
    before = _ask(client, "alpha")
    with pytest.raises(openai.APIStatusError) as failed:
        _ask(client, "broken")
    assert failed.value.status_code == 503
    assert "model broken failed to load" in failed.value.message
    assert _ask(client, "alpha") == before
    assert _ask(client, "beta") == before
    assert sorted(_loaded(server)) == ["alpha", "beta"]
    with pytest.raises(openai.NotFoundError, match="available: alpha, beta, broken"):
        _ask(client, "gamma")


def test_a_model_larger_than_the_whole_budget_is_a_400_naming_the_setting(
    start: Start, models_dir: Path
) -> None:
    server = start(budget_bytes=estimate_bytes(models_dir / "alpha") // 2)
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(_client(server), "alpha")
    assert refused.value.code == "model_too_large"
    assert "memory_budget_mib" in refused.value.message
    assert _loaded(server) == []


def test_keep_alive_per_request_unloads_idle_models(start: Start) -> None:
    server = start()
    client = _client(server)
    _ask(client, "alpha", keep_alive="5m")
    _ask(client, "beta", keep_alive=0)
    deadline = time.monotonic() + 10
    while "beta" in _loaded(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = httpx.get(f"{server.url}/v1/ps").json()["data"]
    assert [(r["model"], r["keep_alive_seconds"]) for r in rows] == [("alpha", 300.0)]
    assert rows[0]["idle_seconds"] >= 0 and rows[0]["memory_bytes"] > 0
    with pytest.raises(openai.BadRequestError, match="keep_alive"):
        _ask(client, "alpha", keep_alive="soon")


def test_the_config_keep_alive_unloads_and_the_next_request_reloads(start: Start) -> None:
    server = start(keep_alive_seconds=0.5)
    client = _client(server)
    first = _ask(client, "alpha")
    deadline = time.monotonic() + 10
    while _loaded(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _loaded(server) == []
    assert _ask(client, "alpha") == first  # loaded again on demand


def test_pinned_models_stay_loaded_under_budget_pressure(
    tiny_model_dir: Path, models_dir: Path
) -> None:
    pinned = _service("pinned", tiny_model_dir)
    pinned.load()
    pool = ModelPool(
        discover=lambda: {ref.name: ref.path for ref in installed_models(models_dir)},
        make_service=_service,
        budget_bytes=int(estimate_bytes(tiny_model_dir) * 2.5),
        keep_alive_seconds=0.1,
    )
    with ServerThread(create_app(ApiConfig(), [pinned], pool=pool, load=False)) as server:
        client = _client(server)
        _ask(client, "alpha")
        _ask(client, "beta")  # evicts alpha, never the pinned one
        time.sleep(1.5)  # past alpha's and beta's keep-alive
        rows = httpx.get(f"{server.url}/v1/ps").json()["data"]
        assert [(r["model"], r["pinned"]) for r in rows] == [("pinned", True)]
        assert _ask(client, "pinned")


def test_edge_agent_ps_shows_what_is_loaded(start: Start) -> None:
    from typer.testing import CliRunner

    from edge_agent.cli import app

    server = start()
    _ask(_client(server), "beta", keep_alive="10m")
    result = CliRunner().invoke(app, ["ps", "--url", server.url])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split()[0] == "beta" and "MiB" in lines[1] and lines[1].endswith("idle")
    assert lines[-1].startswith("memory: ")
    unreachable = CliRunner().invoke(app, ["ps", "--url", "http://127.0.0.1:9"])
    assert unreachable.exit_code != 0 and "no agent answers" in unreachable.output


def test_an_embeddings_encoder_counts_in_the_memory_budget(models_dir: Path) -> None:
    encoder = synthetic_encoder.build()
    alpha = estimate_bytes(models_dir / "alpha")
    pool = ModelPool(
        discover=lambda: {"alpha": models_dir / "alpha"},
        make_service=_service,
        budget_bytes=alpha + estimate_bytes(encoder) - 1,  # either fits, not both
        retry_after_seconds=7,
    )
    encoders = Encoders(lambda: {"minilm": encoder})
    with ServerThread(create_app(ApiConfig(), [], pool=pool, encoders=encoders)) as server:
        client = _client(server)
        _ask(client, "alpha")
        client.embeddings.create(model="minilm", input="a clause")
        assert _loaded(server) == []  # the idle model made room for the encoder
        assert httpx.get(f"{server.url}/v1/ps").json()["memory_used_bytes"] == (
            estimate_bytes(encoder)
        )
        with pytest.raises(openai.APIStatusError) as refused:
            _ask(client, "alpha")  # the encoder stays loaded: no room beside it
        assert refused.value.status_code == 503
        assert "does not fit the memory budget" in refused.value.message
