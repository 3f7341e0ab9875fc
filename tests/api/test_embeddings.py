"""/v1/embeddings through the official openai client, on a random-weight BERT-style
encoder exported to ONNX and int8-quantized by the hub (optimum in its own venv)."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from edge_agent.api import create_app
from edge_agent.config import ApiConfig
from edge_agent.models import EMBEDDINGS, installed_models
from edge_agent.runtime.encoder import Encoders
from hub.registry import synthetic_encoder
from tests.conftest import ServerThread


@pytest.fixture(scope="session")
def encoder_dir() -> Path:
    return synthetic_encoder.build()


@pytest.fixture
def server(tmp_path: Path, encoder_dir: Path) -> Iterator[ServerThread]:
    models = tmp_path / "models"
    shutil.copytree(encoder_dir, models / "minilm")

    def discover() -> dict[str, Path]:
        refs = installed_models(models)
        return {ref.name: ref.path for ref in refs if ref.kind == EMBEDDINGS}

    with ServerThread(create_app(ApiConfig(), [], encoders=Encoders(discover))) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_float_embeddings_are_normalised_and_counted(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(
        model="minilm", input="contract clause", encoding_format="float"
    )
    (item,) = reply.data
    assert len(item.embedding) == 64
    assert abs(float(np.linalg.norm(item.embedding)) - 1.0) < 1e-5
    assert reply.usage.prompt_tokens == reply.usage.total_tokens >= 3  # [CLS] ... [SEP]
    assert "minilm" in [m.id for m in client.models.list()]


def test_base64_matches_float(client: openai.OpenAI, server: ServerThread) -> None:
    as_float = client.embeddings.create(model="minilm", input="x", encoding_format="float")
    as_b64 = client.embeddings.create(model="minilm", input="x", encoding_format="base64")
    blob = base64.b64decode(str(as_b64.data[0].embedding))
    assert np.frombuffer(blob, dtype="<f4").tolist() == as_float.data[0].embedding
    # Given no format, the client asks for base64 itself and decodes it to floats.
    default = client.embeddings.create(model="minilm", input="x")
    assert default.data[0].embedding == as_float.data[0].embedding
    raw = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": "minilm", "input": "x", "encoding_format": "base64"},
    ).json()
    assert isinstance(raw["data"][0]["embedding"], str)  # really sent as base64


def test_same_text_embeds_identically_in_a_batch_and_alone(client: openai.OpenAI) -> None:
    texts = ["the supplier shall deliver", "a much longer passage " * 20, "triage note"]
    batch = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1, 2]
    for index, text in enumerate(texts):
        alone = client.embeddings.create(model="minilm", input=text, encoding_format="float")
        assert _cosine(batch.data[index].embedding, alone.data[0].embedding) == pytest.approx(
            1.0, abs=1e-5
        )
        # Not only the direction: every component (a padded batch shifts them by ~2e-4).
        assert batch.data[index].embedding == pytest.approx(alone.data[0].embedding, abs=1e-6)
    assert _cosine(batch.data[0].embedding, batch.data[2].embedding) < 0.999


def test_an_over_long_input_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="minilm", input=["fine", "word " * 400])
    assert "input 1 is" in refused.value.message
    assert "at most 256" in refused.value.message


def test_dimensions_only_where_the_model_allows(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model="minilm", input="x", dimensions=64)
    assert len(full.data[0].embedding) == 64
    with pytest.raises(openai.BadRequestError, match="not trained to be shortened"):
        client.embeddings.create(model="minilm", input="x", dimensions=32)


def test_an_unknown_embeddings_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="available: minilm"):
        client.embeddings.create(model="nope", input="x")


def test_matryoshka_models_truncate_and_renormalise(tmp_path: Path, encoder_dir: Path) -> None:
    import json

    folder = tmp_path / "models" / "mrl"
    shutil.copytree(encoder_dir, folder)
    config = json.loads((folder / "embeddings.json").read_text())
    (folder / "embeddings.json").write_text(json.dumps({**config, "matryoshka": True}))
    encoders = Encoders(lambda: {"mrl": folder})
    with ServerThread(create_app(ApiConfig(), [], encoders=encoders)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        short = client.embeddings.create(model="mrl", input="x", dimensions=16)
        full = client.embeddings.create(model="mrl", input="x")
    assert len(short.data[0].embedding) == 16
    assert abs(float(np.linalg.norm(short.data[0].embedding)) - 1.0) < 1e-5
    head = np.asarray(full.data[0].embedding[:16])
    assert short.data[0].embedding == pytest.approx(list(head / np.linalg.norm(head)), abs=1e-6)


def test_an_installed_encoder_passes_the_update_health_check_and_a_broken_one_fails(
    tmp_path: Path, encoder_dir: Path
) -> None:
    from edge_agent.updates.errors import HealthCheckFailed
    from edge_agent.updates.health import check_model

    check_model(encoder_dir)
    broken = tmp_path / "broken"
    shutil.copytree(encoder_dir, broken)
    (broken / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(HealthCheckFailed, match="could not load the encoder"):
        check_model(broken)
