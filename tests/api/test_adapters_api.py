"""LoRA adapters served by name through the official openai client: the base loads once,
each request activates its own adapter, adapters of one base and another model answer
concurrently, the prompt cache is never shared across adapters, and an adapter whose
base is missing is refused with what to install."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from edge_agent.api import create_app
from edge_agent.config import ApiConfig
from edge_agent.ps import format_table
from edge_agent.runtime import RuntimeSettings, SchedulerLimits
from edge_agent.runtime.adapters import ADAPTER_CONFIG, ADAPTER_FILE, AdapterRef, read_adapter
from edge_agent.runtime.pool import ModelPool, estimate_bytes
from edge_agent.runtime.service import ModelService
from hub.registry.adapter_convert import convert_adapter
from tests.conftest import ServerThread

PROMPT = "Summarise the clause: the tenant pays rent monthly."


@pytest.fixture(scope="module")
def adapters(
    tiny_lora_base_dir: Path,
    peft_adapters: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, AdapterRef]:
    """contracts-fr and triage-en on base `tiny`, and `orphan`, whose base is not here."""
    root = tmp_path_factory.mktemp("adapters")
    refs = {}
    for name, base in (("contracts-fr", "tiny"), ("triage-en", "tiny"), ("orphan", "gone")):
        folder = root / name
        peft = peft_adapters["triage-en" if name == "triage-en" else "contracts-fr"]
        convert_adapter(peft, tiny_lora_base_dir, folder / ADAPTER_FILE)
        (folder / ADAPTER_CONFIG).write_text(json.dumps({"base": f"{base}@1.0.0"}))
        refs[name] = read_adapter(name, folder)
    return refs


@pytest.fixture
def pool(
    tiny_lora_base_dir: Path, tiny_model_dir: Path, adapters: dict[str, AdapterRef]
) -> ModelPool:
    models = {"tiny": tiny_lora_base_dir, "other": tiny_model_dir}
    return ModelPool(
        discover=lambda: models,
        make_service=lambda name, path: ModelService(
            name, path, RuntimeSettings(), SchedulerLimits()
        ),
        discover_adapters=lambda: adapters,
        budget_bytes=2**30,
    )


@pytest.fixture
def server(pool: ModelPool) -> Iterator[ServerThread]:
    with ServerThread(create_app(ApiConfig(), [], pool=pool)) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _ask(client: openai.OpenAI, model: str) -> tuple[str, int]:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=10,
        temperature=0,
    )
    assert reply.model == model
    usage = reply.usage
    assert usage is not None and usage.completion_tokens == 10
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return reply.choices[0].message.content or "", cached or 0


def test_adapters_are_listed_as_models(client: openai.OpenAI) -> None:
    names = {card.id for card in client.models.list()}
    assert names == {"tiny", "other", "contracts-fr", "triage-en", "orphan"}


def test_two_adapters_of_one_base_and_another_model_answer_concurrently(
    client: openai.OpenAI, server: ServerThread, pool: ModelPool
) -> None:
    alone = {model: _ask(client, model)[0] for model in ("tiny", "contracts-fr", "triage-en")}
    # Greedy: each adapter changes the base's answer, and the two adapters differ.
    assert len(set(alone.values())) == 3
    answers: dict[tuple[str, int], str] = {}
    errors: list[BaseException] = []

    def ask(model: str, index: int) -> None:
        try:
            answers[(model, index)] = _ask(client, model)[0]
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    models = ("contracts-fr", "triage-en", "tiny", "other")
    threads = [threading.Thread(target=ask, args=(m, i)) for m in models for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for model in ("tiny", "contracts-fr", "triage-en"):  # stable, whatever ran beside it
        assert answers[(model, 0)] == answers[(model, 1)] == alone[model]
    assert answers[("other", 0)] == alone["tiny"]  # the same weights without branches
    assert pool.loads == 2  # tiny and other: the base never reloaded for an adapter
    ps = httpx.get(f"{server.url}/v1/ps").json()
    rows = {row["model"]: row for row in ps["data"]}
    table = format_table(ps)  # edge-agent ps: the adapters under their base
    assert [line.split()[:2] for line in table[3:5]] == [["+", "contracts-fr"], ["+", "triage-en"]]
    assert sorted(rows) == ["other", "tiny"]
    adapter_files = {
        name: (Path(pool.adapter(name).folder) / ADAPTER_FILE).stat().st_size  # type: ignore[union-attr]
        for name in ("contracts-fr", "triage-en")
    }
    assert rows["tiny"]["adapters"] == adapter_files
    # The base counts once; each adapter its own bytes.
    assert pool.used_bytes() == (
        rows["tiny"]["memory_bytes"] + sum(adapter_files.values()) + rows["other"]["memory_bytes"]
    )
    assert rows["tiny"]["memory_bytes"] == estimate_bytes(pool.known()["tiny"])


def test_the_prompt_cache_is_never_shared_across_adapters(client: openai.OpenAI) -> None:
    first, cached = _ask(client, "contracts-fr")
    assert cached == 0
    # The same prompt on another adapter, then on the bare base: each computes afresh.
    other, cached = _ask(client, "triage-en")
    assert cached == 0 and other != first
    _, cached = _ask(client, "tiny")
    assert cached == 0
    again, cached = _ask(client, "contracts-fr")  # its own kept prompt, its own answer
    assert cached > 0 and again == first


def test_an_adapter_whose_base_is_missing_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, "orphan")
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "adapter_base_unavailable"
    assert body["message"] == (
        "adapter orphan needs its base model gone@1.0.0, which is not installed: "
        "install gone 1.0.0 first"
    )
