"""Raw HTTP edge cases: malformed bodies, limits, keys, queue full, disconnects, health."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from edge_agent.config import ApiConfig
from edge_agent.runtime import FinishReason, SamplingParams
from tests.runtime.test_generation import BlockingSink

CHAT = "/v1/chat/completions"
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_malformed_json(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    r = httpx.post(
        server.url + CHAT,
        content=b'{"model": "tiny", ',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert "not valid JSON" in error_of(r)["message"]


def test_body_that_is_not_an_object(serve) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(serve().url + CHAT, json=[1, 2])
    assert r.status_code == 400
    assert "JSON object" in error_of(r)["message"]


def test_unknown_field_is_named(serve) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(serve().url + CHAT, json={**BODY, "temprature": 0.5})
    assert r.status_code == 400
    assert error_of(r)["param"] == "temprature"
    assert "unknown field" in error_of(r)["message"]


def test_missing_field_is_named(serve) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(serve().url + CHAT, json={"model": "tiny"})
    assert r.status_code == 400
    assert error_of(r)["param"] == "messages"


def test_wrong_type_in_nested_field(serve) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(
        serve().url + CHAT, json={**BODY, "messages": [{"role": "wizard", "content": "x"}]}
    )
    assert r.status_code == 400
    assert error_of(r)["param"] == "messages.0.role"


def test_out_of_vocabulary_token_ids(serve) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(serve().url + "/v1/completions", json={"model": "tiny", "prompt": [1, 99999]})
    assert r.status_code == 400
    assert "99999" in error_of(r)["message"]


def test_oversized_body_is_413(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(ApiConfig(max_request_bytes=4096))
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 10_000}]}
    r = httpx.post(server.url + CHAT, json=big)
    assert r.status_code == 413
    assert "4096 bytes" in error_of(r)["message"]

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    r = httpx.post(
        server.url + CHAT, content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_api_keys(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(ApiConfig(api_keys=("s3cret",)))
    assert httpx.post(server.url + CHAT, json=BODY).status_code == 401
    wrong = httpx.post(server.url + CHAT, json=BODY, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert error_of(wrong)["code"] == "invalid_api_key"
    ok = httpx.post(server.url + CHAT, json=BODY, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_queue_full_is_429_with_retry_after(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(max_active_sequences=1, max_queued_requests=1)
    service = server.app.state.services["tiny"]
    blocker = BlockingSink()
    service.submit([5, 6], SamplingParams(max_tokens=3), blocker)
    assert blocker.entered.wait(10)
    waiting = threading.Thread(target=lambda: httpx.post(server.url + CHAT, json=BODY, timeout=30))
    waiting.start()
    deadline = time.monotonic() + 10
    while service.scheduler.queue_depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    r = httpx.post(server.url + CHAT, json=BODY)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert error_of(r)["code"] == "queue_full"
    blocker.release.set()
    waiting.join(30)


LONG = {**BODY, "max_tokens": 2000, "ignore_eos": True}


def test_streaming_client_disconnect_frees_its_slot(serve, finish_log) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    with httpx.stream("POST", server.url + CHAT, json={**LONG, "stream": True}) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
    done = finish_log.wait_for(1)
    assert done[0].reason is FinishReason.CANCELLED
    assert done[0].completion_tokens < 2000
    assert server.app.state.services["tiny"].scheduler.active_sequences == 0


def test_non_streaming_client_disconnect_frees_its_slot(serve, finish_log, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.api import generation

    # The tiny model writes its whole answer in about 0.4 s: look for the hang-up often
    # enough to catch it before the answer is complete.
    monkeypatch.setattr(generation, "DISCONNECT_POLL_SECONDS", 0.01)
    server = serve()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + CHAT, json={**LONG, "max_tokens": 2040 - 20}, timeout=0.05)
    done = finish_log.wait_for(1)
    assert done[0].reason is FinishReason.CANCELLED


def test_health_ready_and_metrics(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"][0]["threads"] >= 1
    httpx.post(server.url + CHAT, json=BODY)
    text = httpx.get(server.url + "/metrics").text
    assert 'edge_agent_requests_total{endpoint="chat",status="200"} 1.0' in text
    assert 'edge_agent_tokens_total{kind="completion"} 4.0' in text
    assert "edge_agent_time_to_first_token_seconds_bucket" in text
    assert "edge_agent_queue_depth 0.0" in text


def test_not_ready_while_loading(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.runtime import RuntimeSettings, SchedulerLimits
    from edge_agent.runtime.service import ModelService
    from tests.conftest import LiveServer

    service = ModelService("tiny", tiny_model_dir, RuntimeSettings(), SchedulerLimits())
    with LiveServer([service], ApiConfig()) as server:
        assert httpx.get(server.url + "/readyz").status_code == 503
        r = httpx.post(server.url + CHAT, json=BODY)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "still loading" in error_of(r)["message"]
        service.load()
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert httpx.post(server.url + CHAT, json=BODY).status_code == 200
    service.stop()
