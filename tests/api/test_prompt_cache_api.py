"""The prompt cache seen through the API: usage.prompt_tokens_details and /metrics."""

from __future__ import annotations

import itertools
import re

import httpx
import openai
import pytest

SYSTEM = "You are a careful assistant for the Python standard library. " * 4


@pytest.fixture
def server(serve):  # type: ignore[no-untyped-def]
    return serve()


@pytest.fixture
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def metric(server, name: str) -> float:  # type: ignore[no-untyped-def]
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_chat_reports_cached_tokens_and_metrics_count_them(client, server) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "first"}]
    first = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0
    )
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "second"},
    ]
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached is not None and 40 < cached < usage.prompt_tokens
    assert metric(server, 'edge_agent_prompt_cache_lookups_total{result="miss"}') == 1
    assert metric(server, 'edge_agent_prompt_cache_lookups_total{result="hit"}') == 1
    assert metric(server, "edge_agent_prompt_cache_reused_tokens_total") == cached
    assert metric(server, "edge_agent_prompt_cache_bytes") > 0


def chat_turns(client: openai.OpenAI, turns: int, **extra: object) -> list[tuple[str, int, int]]:
    """A growing chat of one-token answers: (answer, prompt tokens, cached tokens) a turn."""
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    results = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"question number {turn}"})
        reply = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=1, temperature=0, **extra
        )  # type: ignore[call-overload]
        usage = reply.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        answer = reply.choices[0].message.content or ""
        results.append(
            (answer, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0)
        )
        messages.append({"role": "assistant", "content": answer})
    return results


def test_every_turn_of_a_chat_reuses_the_whole_previous_turn(serve) -> None:  # type: ignore[no-untyped-def]
    """A kept turn holds its prompt alone (a one-token answer is never fed back). Cut by
    the stop string, every answer is empty, so the next turn's prompt extends the kept
    one exactly: each turn must reuse all of the previous prompt, read its own new
    tokens, and answer as without the cache."""
    on, off = serve(), serve(prompt_cache_bytes=0)
    clients = [openai.OpenAI(base_url=f"{s.url}/v1", api_key="-", max_retries=0) for s in (on, off)]
    with_cache, without = (chat_turns(c, 6, stop=["\n"]) for c in clients)
    assert [a for a, _, _ in with_cache] == [a for a, _, _ in without]
    assert [c for _, _, c in without] == [0] * 6
    for (_, before, _), (_, _, cached) in itertools.pairwise(with_cache):
        assert before - 1 <= cached <= before


def test_a_structured_output_reuses_the_shared_prefix(serve) -> None:  # type: ignore[no-untyped-def]
    on, off = serve(), serve(prompt_cache_bytes=0)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    for question in ("first", "second"):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        replies = [
            openai.OpenAI(
                base_url=f"{s.url}/v1", api_key="-", max_retries=0
            ).chat.completions.create(
                model="tiny", messages=messages, max_tokens=24, temperature=0, response_format=fmt
            )  # type: ignore[call-overload]
            for s in (on, off)
        ]
        assert replies[0].choices[0].message.content == replies[1].choices[0].message.content
    usage = replies[0].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens_details.cached_tokens or 0) > 40
