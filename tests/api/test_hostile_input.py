"""Inputs that once crashed a handler (500) are refused with 400 in OpenAI's shape, and
the prompt's text never reaches the logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from tests.api.test_http_errors import CHAT, error_of

MARKER = "private-words-5e1f"  # stands for what a user typed: must never be logged


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def chat(content: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}]
    return {"model": "tiny", "messages": messages, "max_tokens": 2, **extra}


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


CASES = [
    ("surrogate-chat", CHAT, chat(f"{MARKER} \ud800 {MARKER}"), "messages.0.content"),
    (
        "surrogate-completion",
        "/v1/completions",
        {"model": "tiny", "prompt": f"{MARKER}\ud800", "max_tokens": 2},
        "prompt",
    ),
    (
        "surrogate-parts",
        CHAT,
        chat(MARKER)
        | {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
        "messages.0.content.0.text",
    ),
    ("surrogate-model", CHAT, chat(MARKER) | {"model": "\ud800"}, "model"),
    ("top-k", CHAT, chat(MARKER, top_k=2**31), "top_k"),
    ("top-k-stream", CHAT, chat(MARKER, top_k=2**31, stream=True), "top_k"),
    (
        "top-k-completion-stream",
        "/v1/completions",
        {"model": "tiny", "prompt": MARKER, "top_k": 2**40, "stream": True},
        "top_k",
    ),
    (
        "schema-900-deep",
        CHAT,
        chat(MARKER, response_format=schema_format(nested(900))),
        "response_format.json_schema.schema",
    ),
    (
        "schema-the-compiler-refuses",
        CHAT,
        chat(MARKER, response_format=schema_format({"type": "bogus"})),
        "response_format",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "param"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_hostile_input_is_400_and_never_logged(serve, caplog, path, body, param) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    uvicorn_log = logging.getLogger("uvicorn")  # does not propagate to the root logger
    uvicorn_log.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    try:
        # json.dumps writes lone surrogates as \ud800 escapes, exactly as a client would.
        r = httpx.post(
            server.url + path,
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert MARKER not in r.text
    assert MARKER not in caplog.text
    assert not [rec for rec in caplog.records if rec.name.startswith("uvicorn")]


def test_a_sane_schema_still_works(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    r = httpx.post(
        server.url + CHAT,
        json=chat("hi", max_tokens=8, response_format=schema_format(nested(3))),
    )
    assert r.status_code == 200, r.text
