"""`n` choices per request through the official openai client on the tiny model."""

from __future__ import annotations

from typing import Any

import openai
import pytest

ASK: Any = [{"role": "user", "content": "count to three"}]


@pytest.fixture
def server(serve):  # type: ignore[no-untyped-def]
    return serve()


@pytest.fixture
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_n_choices_each_indexed_with_usage_added_up(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        n=3,
        max_tokens=6,
        temperature=0.9,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" and c.message.content for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 18
    single = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=1)
    assert single.usage is not None and reply.usage.prompt_tokens == single.usage.prompt_tokens


def test_seeded_choices_repeat_and_differ_from_each_other(client: openai.OpenAI) -> None:
    def ask() -> list[str | None]:
        reply = client.chat.completions.create(
            model="tiny", messages=ASK, n=3, max_tokens=12, temperature=1.0, seed=5
        )
        return [c.message.content for c in reply.choices]

    first = ask()
    assert first == ask()
    assert len(set(first)) > 1  # choice i samples with seed + i
    alone = client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=12, temperature=1.0, seed=5
    )
    assert alone.choices[0].message.content == first[0]


def test_streamed_choices_match_the_whole_ones(client: openai.OpenAI) -> None:
    args: Any = {"model": "tiny", "messages": ASK, "n": 2, "max_tokens": 10, "temperature": 0}
    whole = [c.message.content for c in client.chat.completions.create(**args).choices]
    chunks = list(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    texts = ["", ""]
    finishes: list[tuple[int, str]] = []
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append((choice.index, choice.finish_reason))
    assert texts == whole
    assert sorted(finishes) == [(0, "length"), (1, "length")]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


def test_text_completions_take_n_too(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt="def f(", n=2, max_tokens=4)
    assert [c.index for c in reply.choices] == [0, 1]
