"""The prompt cache seen through the API: usage.prompt_tokens_details and /metrics."""

from __future__ import annotations

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
