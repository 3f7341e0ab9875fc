"""Hostile adapters at serving time, through the official openai client: an installed
adapter whose tensors do not fit its base (installed before the health check existed, or
copied in by hand) fails its own requests with a clear error and leaves its base, the
other adapters and other models serving; many concurrent requests over several adapters
each get their own adapter's answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import openai
import pytest

from edge_agent.api import create_app
from edge_agent.config import ApiConfig
from edge_agent.runtime import RuntimeSettings, SchedulerLimits
from edge_agent.runtime.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    LORA_INPUTS,
    AdapterRef,
    read_adapter,
)
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.service import ModelService
from hub.registry.adapter_convert import convert_adapter
from tests.conftest import ServerThread

PROMPT = "Summarise the clause: the tenant pays rent monthly."


def _write_broken(folder: Path, base_dir: Path) -> None:
    """Every LoRA input of the base with a rank-3 matrix the wrong way round."""
    shapes = json.loads((base_dir / LORA_INPUTS).read_text())
    rng = np.random.default_rng(1)
    params = {
        name: ort.OrtValue.ortvalue_from_numpy(
            rng.standard_normal((cols or 3, rows or 3)).astype(np.float32)
        )
        for name, (rows, cols) in shapes.items()
    }
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(params)
    folder.mkdir(parents=True)
    adapter.export_adapter(str(folder / ADAPTER_FILE))


@pytest.fixture(scope="module")
def adapters(
    tiny_lora_base_dir: Path,
    peft_adapters: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, AdapterRef]:
    root = tmp_path_factory.mktemp("serving-attacks")
    refs = {}
    for name in ("contracts-fr", "triage-en", "broken"):
        folder = root / name
        if name == "broken":
            _write_broken(folder, tiny_lora_base_dir)
        else:
            convert_adapter(peft_adapters[name], tiny_lora_base_dir, folder / ADAPTER_FILE)
        (folder / ADAPTER_CONFIG).write_text(json.dumps({"base": "tiny@1.0.0"}))
        refs[name] = read_adapter(name, folder)
    return refs


@pytest.fixture
def client(
    tiny_lora_base_dir: Path, tiny_model_dir: Path, adapters: dict[str, AdapterRef]
) -> Iterator[openai.OpenAI]:
    models = {"tiny": tiny_lora_base_dir, "other": tiny_model_dir}
    pool = ModelPool(
        discover=lambda: models,
        make_service=lambda name, path: ModelService(
            name, path, RuntimeSettings(), SchedulerLimits()
        ),
        discover_adapters=lambda: adapters,
        budget_bytes=2**30,
    )
    with ServerThread(create_app(ApiConfig(), [], pool=pool)) as server:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _ask(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=10,
        temperature=0,
        timeout=60,
    )
    return reply.choices[0].message.content or ""


def test_an_adapter_that_does_not_fit_its_base_fails_alone(client: openai.OpenAI) -> None:
    before = {model: _ask(client, model) for model in ("tiny", "contracts-fr", "other")}
    with pytest.raises(openai.APIStatusError) as caught:
        _ask(client, "broken")
    assert caught.value.status_code == 503
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "adapter_does_not_fit"
    assert body["message"].startswith("adapter broken does not load on tiny@1.0.0: ")
    assert body["message"].endswith(
        "model.layers.0.attn.k_proj.lora_A.MatMul.weight has shape [3, 64], the base takes [64, 0]"
    )
    for _ in range(2):  # the base's scheduler still runs, for it and its adapters
        assert {model: _ask(client, model) for model in before} == before


def test_concurrent_requests_over_adapters_each_get_their_own_answer(
    client: openai.OpenAI,
) -> None:
    models = ("tiny", "contracts-fr", "triage-en", "other")
    alone = {model: _ask(client, model) for model in models}
    answers: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def ask(model: str) -> None:
        try:
            answers.append((model, _ask(client, model)))
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(m,)) for _ in range(4) for m in models]
    threads += [threading.Thread(target=ask, args=("broken",))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [type(e) for e in errors] == [openai.InternalServerError]  # 503: only "broken"
    assert sorted(answers) == sorted((m, alone[m]) for _ in range(4) for m in models)


def test_an_adapter_updated_while_its_base_stays_loaded_serves_its_new_weights(
    tiny_lora_base_dir: Path,
    adapters: dict[str, AdapterRef],
    tmp_path: Path,
) -> None:
    """The store swaps an adapter's `active` pointer to its new version; the base stays
    loaded. The next request must run the new weights, not the ones loaded before."""
    active = tmp_path / "contracts-fr" / "active"
    active.parent.mkdir()
    active.symlink_to(adapters["contracts-fr"].folder)
    served = {
        "contracts-fr": read_adapter("contracts-fr", active),
        "triage-en": adapters["triage-en"],
    }
    pool = ModelPool(
        discover=lambda: {"tiny": tiny_lora_base_dir},
        make_service=lambda name, path: ModelService(
            name, path, RuntimeSettings(), SchedulerLimits()
        ),
        discover_adapters=lambda: served,
        budget_bytes=2**30,
    )
    with ServerThread(create_app(ApiConfig(), [], pool=pool)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        old, triage = _ask(client, "contracts-fr"), _ask(client, "triage-en")
        assert old != triage
        new_version = tmp_path / "next"
        new_version.symlink_to(adapters["triage-en"].folder)
        new_version.replace(active)  # as the store activates: one rename
        assert _ask(client, "contracts-fr") == triage  # the new version's weights
        rows = {row["model"]: row for row in pool.ps()}
        size = adapters["triage-en"].file_bytes()
        assert rows["tiny"]["adapters"] == {"contracts-fr": size, "triage-en": size}
        assert pool.used_bytes() == rows["tiny"]["memory_bytes"] + 2 * size
        assert pool.loads == 1  # the base never reloaded
