"""Chat logprobs through the official openai client, checked against the model's own
logits computed here with onnxruntime-genai directly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from edge_agent.runtime import ChatMessage, LoadedModel, RuntimeSettings

ASK: Any = [{"role": "user", "content": "print the numbers"}]


@pytest.fixture
def server(serve):  # type: ignore[no-untyped-def]
    return serve()


@pytest.fixture
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def first_token_logprobs(model_dir: Path) -> np.ndarray:
    """Log-softmax of the model's logits for the first answer token, outside the agent."""
    from edge_agent.runtime._og import og

    model = LoadedModel.load("ref", model_dir, RuntimeSettings())
    ids = model.encode(model.chat_prompt([ChatMessage("user", ASK[0]["content"])]))
    params = og.GeneratorParams(model.model)
    params.set_search_options(max_length=len(ids) + 4, do_sample=False)
    generator = og.Generator(model.model, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    generator.generate_next_token()
    logits = np.asarray(generator.get_logits(), dtype=np.float64).reshape(-1)
    shifted: np.ndarray = logits - logits.max()
    return shifted - math.log(np.exp(shifted).sum())


def test_chat_logprobs_are_the_models_own(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert reply.usage is not None and len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content) == choice.message.content
    for token in content:
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)  # greedy
        assert [t.logprob for t in token.top_logprobs] == sorted(
            (t.logprob for t in token.top_logprobs), reverse=True
        )
    reference = first_token_logprobs(tiny_model_dir)
    assert content[0].logprob == pytest.approx(float(reference.max()), abs=1e-4)
    runner_up = float(np.sort(reference)[-2])
    assert content[0].top_logprobs[1].logprob == pytest.approx(runner_up, abs=1e-4)


def test_streamed_logprobs_match_the_whole_answer(client: openai.OpenAI) -> None:
    args: Any = {"model": "tiny", "messages": ASK, "max_tokens": 8, "temperature": 0}
    whole = client.chat.completions.create(**args, logprobs=True).choices[0].logprobs
    assert whole is not None and whole.content is not None
    streamed = [
        token
        for chunk in client.chat.completions.create(**args, logprobs=True, stream=True)
        for choice in chunk.choices
        if choice.logprobs and choice.logprobs.content
        for token in choice.logprobs.content
    ]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in whole.content]
    assert all(t.top_logprobs == [] for t in streamed)


def test_no_logprobs_unless_asked(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2)
    assert reply.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_bad_logprobs_requests_name_the_field(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, **extra)
    assert caught.value.param == param


def test_text_completions_refuse_logprobs_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, logprobs=2)
    assert caught.value.param == "logprobs"
