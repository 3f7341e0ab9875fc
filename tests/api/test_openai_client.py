"""The local API driven by the official openai client, against the real tiny model."""

from __future__ import annotations

import json

import openai
import pytest


@pytest.fixture
def server(serve):  # type: ignore[no-untyped-def]
    return serve()


@pytest.fixture
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        max_tokens=10,
        temperature=0,
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 10


def test_chat_streaming_matches_the_non_streaming_answer(client: openai.OpenAI) -> None:
    args = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16


def test_text_completion_streaming_and_not(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny", prompt="def f():", max_tokens=8, temperature=0)
    assert whole.object == "text_completion"
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    streamed = client.completions.create(
        model="tiny", prompt="def f():", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_token_id_prompt(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt=[10, 20, 30], max_tokens=4)
    assert reply.usage is not None and reply.usage.prompt_tokens == 3


def test_stop_and_seed(client: openai.OpenAI) -> None:
    args = {"model": "tiny", "prompt": "import", "max_tokens": 30, "seed": 11}
    full = client.completions.create(**args).choices[0].text
    assert client.completions.create(**args).choices[0].text == full
    stop = full[8:11]
    cut = client.completions.create(**args, stop=[stop])
    assert cut.choices[0].text == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "status?"}],
        max_tokens=30,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or "")["ok"], bool)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert info.value.body["param"] == "model"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"n": 9}, "n"),  # more choices than one batch holds
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"max_tokens": 5000}, "messages"),
    ],
)
def test_bad_parameters_are_400_with_the_field_named(
    client: openai.OpenAI, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], **extra
        )
    assert info.value.body["param"] == param  # type: ignore[index]
