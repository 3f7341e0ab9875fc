"""Run one generation for an HTTP request: streamed as SSE, or collected into one body.

Chat and text completions differ only in how chunks look; `Shape` is that difference.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from edge_agent.api.arrivals import Arrivals
from edge_agent.api.errors import ApiError, sse_error
from edge_agent.api.metrics import Metrics
from edge_agent.api.tools import CallStream, ToolPlan, parse_calls
from edge_agent.api.usage import UsageRecorder
from edge_agent.runtime import (
    Finished,
    FinishReason,
    Overloaded,
    SamplingParams,
    Submission,
    TextDelta,
)
from edge_agent.runtime.service import ModelService
from edge_agent.runtime.sinks import AsyncSink

DISCONNECT_POLL_SECONDS = 0.25


class Shape(Protocol):
    """How one endpoint's responses look."""

    opens_with_role: bool

    def chunk(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]: ...

    def full(self, text: str, finish: str) -> dict[str, Any]: ...


@dataclass
class Generation:
    service: ModelService
    endpoint: str
    prompt_ids: list[int]
    params: SamplingParams
    metrics: Metrics
    shape: Callable[[str, str, int], Shape]  # (id, model name, created) -> Shape
    request: Request
    arrivals: Arrivals
    recorder: UsageRecorder  # anonymous telemetry
    tool_plan: ToolPlan | None = None  # chat with tools: calls are read from the answer

    def __post_init__(self) -> None:
        self.started = time.perf_counter()
        self.id = uuid.uuid4().hex
        self.created = int(time.time())
        self.first_token_at: float | None = None

    def start(self) -> tuple[Submission, AsyncSink]:
        sink = AsyncSink()
        self.arrivals.end(self.request.scope)  # it reaches the scheduler now
        try:
            return self.service.submit(self.prompt_ids, self.params, sink), sink
        except Overloaded:
            self.recorder.rejected(self.service)
            raise
        finally:
            self.arrivals.settle(self.request.scope)  # queued: a retiring version may drain

    def _observe_delta(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.metrics.first_token_seconds.observe(self.first_token_at - self.started)

    def _observe_finish(self, done: Finished, status: int) -> None:
        now = time.perf_counter()
        self.metrics.requests.labels(self.endpoint, str(status)).inc()
        self.metrics.request_seconds.labels(self.endpoint).observe(now - self.started)
        self.metrics.tokens.labels("prompt").inc(done.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(done.completion_tokens)
        if done.cache_lookup:
            result = "hit" if done.cached_tokens else "miss"
            self.metrics.prompt_cache_lookups.labels(result).inc()
            self.metrics.prompt_cache_reused_tokens.inc(done.cached_tokens)
        if self.first_token_at is not None and done.completion_tokens > 1:
            per_token = (now - self.first_token_at) / (done.completion_tokens - 1)
            self.metrics.token_seconds.observe(per_token)
        self.recorder.finished(self.service, done, self.started, self.first_token_at, now)

    def usage(self, done: Finished) -> dict[str, Any]:
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
        }

    # --- streaming -----------------------------------------------------------------------

    def stream(self, include_usage: bool) -> StreamingResponse:
        sub, sink = self.start()
        shape = self.shape(self.id, self.service.name, self.created)
        return StreamingResponse(
            self._sse(sub, sink, shape, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(
        self, sub: Submission, sink: AsyncSink, shape: Shape, include_usage: bool
    ) -> AsyncIterator[bytes]:
        calls = CallStream() if self.tool_plan is not None else None
        try:
            if shape.opens_with_role:
                yield _sse(shape.chunk(None, None, True))
            async for event in sink:
                if isinstance(event, TextDelta):
                    self._observe_delta()
                    text = calls.feed(event.text) if calls is not None else event.text
                    if text:
                        yield _sse(shape.chunk(text, None, False))
                    continue
                failure = _failure(event, self.tool_plan is not None)
                self._observe_finish(event, failure.status if failure else 200)
                if failure is not None:
                    yield sse_error(failure)
                    return
                finish = event.reason.value
                if calls is not None:
                    made, held = calls.finish()
                    if held:
                        yield _sse(shape.chunk(held, None, False))
                    if made:
                        yield _sse(_tool_calls_chunk(shape.chunk(None, None, False), made))
                        finish = "tool_calls"
                yield _sse(shape.chunk(None, finish, False))
                if include_usage:
                    usage = shape.chunk(None, None, False)
                    usage["choices"] = []
                    usage["usage"] = self.usage(event)
                    yield _sse(usage)
            yield b"data: [DONE]\n\n"
        finally:
            sub.cancel()  # a client that went away frees its slot at once

    # --- one body ------------------------------------------------------------------------

    async def respond(self) -> JSONResponse:
        sub, sink = self.start()
        watcher = asyncio.create_task(_cancel_on_disconnect(self.request, sub))
        parts: list[str] = []
        try:
            async for event in sink:
                if isinstance(event, TextDelta):
                    self._observe_delta()
                    parts.append(event.text)
                    continue
                failure = _failure(event, self.tool_plan is not None)
                self._observe_finish(event, failure.status if failure else 200)
                if failure is not None:
                    raise failure
                shape = self.shape(self.id, self.service.name, self.created)
                text = "".join(parts)
                body = shape.full(text, event.reason.value)
                made = parse_calls(text) if self.tool_plan is not None else None
                if made:
                    choice = body["choices"][0]
                    choice["message"].update(content=None, tool_calls=made)
                    choice["finish_reason"] = "tool_calls"
                body["usage"] = self.usage(event)
                return JSONResponse(body)
        finally:
            watcher.cancel()
            sub.cancel()
        raise ApiError(500, "generation ended without a result", type_="server_error")


# onnxruntime-genai's message when llguidance refuses a response_format's JSON schema:
# the client's mistake, not the server's.
GRAMMAR_ERROR = "Error creating grammar"


def _failure(done: Finished, tools: bool = False) -> ApiError | None:
    if done.reason is FinishReason.ERROR and (done.error or "").startswith(GRAMMAR_ERROR):
        param = "tools" if tools else "response_format"
        return ApiError(
            400,
            f"{param}: the JSON schema cannot be used for guided decoding: {done.error}",
            param=param,
            code="invalid_json_schema",
        )
    if done.reason is FinishReason.ERROR:
        return ApiError(500, f"generation failed: {done.error}", type_="server_error")
    if done.reason is FinishReason.CANCELLED:
        return ApiError(
            503, "generation was cancelled: the agent is stopping", type_="server_error"
        )
    return None


async def _cancel_on_disconnect(request: Request, sub: Submission) -> None:
    while not sub.cancelled:
        if await request.is_disconnected():
            sub.cancel()
            return
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


def _tool_calls_chunk(chunk: dict[str, Any], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """One delta with every call whole: the calls are known only once decoding ends."""
    chunk["choices"][0]["delta"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"index": i, **call} for i, call in enumerate(calls)],
    }
    return chunk


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True)
class ChatShape:
    id: str
    model: str
    created: int
    opens_with_role = True

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.id}",
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def chunk(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self._envelope("chat.completion.chunk"), "choices": [choice]}

    def full(self, text: str, finish: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return {**self._envelope("chat.completion"), "choices": [choice]}


@dataclass(frozen=True)
class TextShape:
    id: str
    model: str
    created: int
    opens_with_role = False

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": f"cmpl-{self.id}",
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def chunk(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**self._envelope(), "choices": [choice]}

    def full(self, text: str, finish: str) -> dict[str, Any]:
        return self.chunk(text, finish, False)
