"""/metrics counts every response by status, refusals by reason and errors by class: the
requests are made for real over HTTP and the counts read back from /metrics."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx

from edge_agent.config import ApiConfig
from edge_agent.runtime import SamplingParams
from tests.runtime.test_generation import BlockingSink

CHAT = "/v1/chat/completions"
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
KEY = {"authorization": "Bearer s3cret"}


def _stalled_body(port: int) -> bytes:
    """Headers promising a body that never comes: the server's body deadline answers 408."""
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer s3cret\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"}}" in answer:
                break
    return answer


def _queue_full(server) -> httpx.Response:  # type: ignore[no-untyped-def]
    service = server.app.state.services["tiny"]
    blocker = BlockingSink()
    service.submit([5, 6], SamplingParams(max_tokens=3), blocker)
    assert blocker.entered.wait(10)
    waiting = threading.Thread(
        target=lambda: httpx.post(server.url + CHAT, json=BODY, headers=KEY, timeout=30)
    )
    waiting.start()
    deadline = time.monotonic() + 10
    while service.scheduler.queue_depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = httpx.post(server.url + CHAT, json=BODY, headers=KEY)
    blocker.release.set()
    waiting.join(30)
    return refused


def test_every_status_rejection_and_error_class_is_counted(serve) -> None:  # type: ignore[no-untyped-def]
    api = ApiConfig(api_keys=("s3cret",), max_request_bytes=4096, request_body_timeout_seconds=1)
    server = serve(api, max_active_sequences=1, max_queued_requests=1)

    def boom() -> None:
        raise RuntimeError("a bug")

    server.app.add_api_route("/boom", boom)  # a handler that fails as a bug would
    url = server.url
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 10_000}]}
    statuses = [
        httpx.post(url + CHAT, json=BODY, headers=KEY).status_code,
        httpx.post(url + CHAT, content=b"{", headers=KEY).status_code,
        httpx.post(url + CHAT, json=BODY).status_code,
        httpx.post(url + CHAT, json=BODY, headers={**KEY, "host": "evil.example"}).status_code,
        httpx.post(url + CHAT, json={**BODY, "model": "nosuch"}, headers=KEY).status_code,
        httpx.get(url + "/nope", headers=KEY).status_code,
        httpx.post(url + CHAT, json=big, headers=KEY).status_code,
        httpx.get(url + "/boom", headers=KEY).status_code,
        _queue_full(server).status_code,
    ]
    assert _stalled_body(int(server.port)).startswith(b"HTTP/1.1 408")
    assert statuses == [200, 400, 401, 403, 404, 404, 413, 500, 429]
    text = httpx.get(url + "/metrics", headers=KEY).text
    for endpoint, status in [
        ("chat", 400),
        ("chat", 401),
        ("chat", 403),
        ("chat", 404),
        ("chat", 408),
        ("chat", 413),
        ("chat", 429),
        ("other", 404),
        ("other", 500),
    ]:
        assert f'edge_agent_requests_total{{endpoint="{endpoint}",status="{status}"}} 1.0' in text
    # the one that waited behind the blocker, and the first
    assert 'edge_agent_requests_total{endpoint="chat",status="200"} 2.0' in text
    for reason in (
        "invalid_api_key",
        "host_not_allowed",
        "request_too_large",
        "request_timeout",
        "queue_full",
    ):
        assert f'edge_agent_rejections_total{{reason="{reason}"}} 1.0' in text
    for kind in ("invalid_request_error", "model_not_found", "not_found", "internal_error"):
        assert f'edge_agent_errors_total{{class="{kind}"}} 1.0' in text


def test_models_created_is_the_install_time(serve, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert card["created"] == int(os.stat(tiny_model_dir).st_mtime) > 0
    assert json.dumps(card)  # plain JSON, as OpenAI clients expect
