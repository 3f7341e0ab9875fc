"""Run one generation for an HTTP request: streamed as SSE, or collected into one body.

Chat and text completions differ only in how chunks look; `Shape` is that difference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from edge_agent.api.arrivals import Arrivals
from edge_agent.api.errors import ApiError, sse_error
from edge_agent.api.metrics import Metrics
from edge_agent.api.tools import CallStream, ToolPlan, parse_calls
from edge_agent.api.usage import UsageRecorder
from edge_agent.runtime import (
    Event,
    Finished,
    FinishReason,
    Overloaded,
    SamplingParams,
    Submission,
    TextDelta,
)
from edge_agent.runtime.scheduler import TokenLogprob
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
    n: int = 1  # choices: sequences sampled together, one batch

    def __post_init__(self) -> None:
        self.started = time.perf_counter()
        self.id = uuid.uuid4().hex
        self.created = int(time.time())
        self.first_token_at: float | None = None

    @property
    def model_name(self) -> str:
        """The name the client asked for: an adapter's own, not its base's."""
        return self.params.adapter or self.service.name

    def start(self) -> list[tuple[Submission, AsyncSink]]:
        """Submit the `n` sequences; they arrive together, so they decode as one batch."""
        started: list[tuple[Submission, AsyncSink]] = []
        self.arrivals.end(self.request.scope)  # it reaches the scheduler now
        try:
            for index in range(self.n):
                sink = AsyncSink()
                started.append(
                    (self.service.submit(self.prompt_ids, self._params(index), sink), sink)
                )
        except Overloaded:
            self.recorder.rejected(self.service)
            for sub, _ in started:
                sub.cancel()
            raise
        finally:
            self.arrivals.settle(self.request.scope)  # queued: a retiring version may drain
        return started

    def _params(self, index: int) -> SamplingParams:
        """Choice i of a seeded request samples with seed + i: n copies would be alike."""
        seed = self.params.seed
        if index == 0 or seed is None:
            return self.params
        return dataclasses.replace(self.params, seed=(seed + index) % 2**31)

    def _observe_delta(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.metrics.first_token_seconds.observe(self.first_token_at - self.started)

    def _observe_finish(self, done: Finished, status: int) -> None:
        now = time.perf_counter()
        self.metrics.requests.labels(self.endpoint, str(status)).inc()
        self.metrics.model_requests.labels(self.model_name, str(status)).inc()
        self.metrics.request_seconds.labels(self.endpoint).observe(now - self.started)
        self.metrics.tokens.labels("prompt").inc(done.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(done.completion_tokens)
        if self.first_token_at is not None and done.completion_tokens > 1:
            per_token = (now - self.first_token_at) / (done.completion_tokens - 1)
            self.metrics.token_seconds.observe(per_token)
        self.recorder.finished(self.service, done, self.started, self.first_token_at, now)

    def _observe_cache(self, done: Finished) -> None:
        if done.cache_lookup:
            result = "hit" if done.cached_tokens else "miss"
            self.metrics.prompt_cache_lookups.labels(result).inc()
            self.metrics.prompt_cache_reused_tokens.inc(done.cached_tokens)

    def _settle(self, done: list[Finished]) -> tuple[Finished, ApiError | None]:
        """The request's outcome once every choice has finished: one Finished for the
        metrics, the prompt counted once and the choices' completions added up."""
        for item in done:
            self._observe_cache(item)
        failures = [(d, f) for d in done if (f := _failure(d, self.tool_plan is not None))]
        base, failure = failures[0] if failures else (done[0], None)
        total = dataclasses.replace(
            base,
            completion_tokens=sum(d.completion_tokens for d in done),
            cached_tokens=max(d.cached_tokens for d in done),
        )
        self._observe_finish(total, failure.status if failure else 200)
        return total, failure

    def usage(self, done: Finished) -> dict[str, Any]:
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
        }

    # --- streaming -----------------------------------------------------------------------

    def stream(self, include_usage: bool) -> StreamingResponse:
        started = self.start()
        shape = self.shape(self.id, self.model_name, self.created)
        return StreamingResponse(
            self._sse(started, shape, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(
        self, started: list[tuple[Submission, AsyncSink]], shape: Shape, include_usage: bool
    ) -> AsyncIterator[bytes]:
        def chunk(index: int, text: str | None, finish: str | None, first: bool) -> bytes:
            return _sse(_at(shape.chunk(text, finish, first), index))

        calls = [CallStream() if self.tool_plan is not None else None for _ in started]
        done: list[Finished] = []
        try:
            if shape.opens_with_role:
                for index in range(len(started)):
                    yield chunk(index, None, None, True)
            async for index, event in _merged([sink for _, sink in started]):
                reader = calls[index]
                if isinstance(event, TextDelta):
                    self._observe_delta()
                    text = reader.feed(event.text) if reader is not None else event.text
                    if event.logprobs:
                        piece = _at(shape.chunk(text, None, False), index)
                        piece["choices"][0]["logprobs"] = self._logprobs(event.logprobs)
                        yield _sse(piece)
                    elif text:
                        yield chunk(index, text, None, False)
                    continue
                done.append(event)
                if _failure(event) is None:
                    finish = event.reason.value
                    if reader is not None:
                        made, held = reader.finish()
                        if held:
                            yield chunk(index, held, None, False)
                        if made:
                            tool_chunk = _at(shape.chunk(None, None, False), index)
                            yield _sse(_tool_calls_chunk(tool_chunk, made))
                            finish = "tool_calls"
                    yield chunk(index, None, finish, False)
                if len(done) < len(started) and _failure(event) is None:
                    continue
                total, failure = self._settle(done)
                if failure is not None:
                    yield sse_error(failure)
                    return
                if include_usage:
                    usage = shape.chunk(None, None, False)
                    usage["choices"] = []
                    usage["usage"] = self.usage(total)
                    yield _sse(usage)
            yield b"data: [DONE]\n\n"
        finally:
            for sub, _ in started:
                sub.cancel()  # a client that went away frees its slots at once

    # --- one body ------------------------------------------------------------------------

    async def respond(self) -> JSONResponse:
        started = self.start()
        watchers = [
            asyncio.create_task(_cancel_on_disconnect(self.request, sub)) for sub, _ in started
        ]
        parts: list[list[str]] = [[] for _ in started]
        logprobs: list[list[TokenLogprob]] = [[] for _ in started]
        done: dict[int, Finished] = {}
        try:
            async for index, event in _merged([sink for _, sink in started]):
                if isinstance(event, TextDelta):
                    self._observe_delta()
                    parts[index].append(event.text)
                    logprobs[index].extend(event.logprobs)
                    continue
                done[index] = event
                if len(done) < len(started) and _failure(event) is None:
                    continue
                total, failure = self._settle(list(done.values()))
                if failure is not None:
                    raise failure
                shape = self.shape(self.id, self.model_name, self.created)
                choices = [
                    self._choice(shape, index, "".join(parts[index]), done[index])
                    for index in range(len(started))
                ]
                if self.params.logprobs is not None:
                    for choice, tokens in zip(choices, logprobs, strict=True):
                        choice["logprobs"] = self._logprobs(tokens)
                body = shape.full("", "stop")
                body["choices"] = choices
                body["usage"] = self.usage(total)
                return JSONResponse(body)
        finally:
            for watcher in watchers:
                watcher.cancel()
            for sub, _ in started:
                sub.cancel()
        raise ApiError(500, "generation ended without a result", type_="server_error")

    def _logprobs(self, tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
        """OpenAI's chat logprobs: each token's text, bytes and log probability."""
        model = self.service.require()[0]

        def entry(token: int, logprob: float) -> dict[str, Any]:
            text = model.tokenizer.decode(np.asarray([token], dtype=np.int32))
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        content = [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
            for t in tokens
        ]
        return {"content": content, "refusal": None}

    def _choice(self, shape: Shape, index: int, text: str, done: Finished) -> dict[str, Any]:
        choice: dict[str, Any] = shape.full(text, done.reason.value)["choices"][0]
        choice["index"] = index
        made = parse_calls(text) if self.tool_plan is not None else None
        if made:
            choice["message"].update(content=None, tool_calls=made)
            choice["finish_reason"] = "tool_calls"
        return choice


async def _merged(sinks: list[AsyncSink]) -> AsyncIterator[tuple[int, Event]]:
    """Every sink's events, tagged with the sink's index, as they come."""
    if len(sinks) == 1:
        async for event in sinks[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    async def pump(index: int, sink: AsyncSink) -> None:
        async for event in sink:
            await queue.put((index, event))

    tasks = [asyncio.create_task(pump(i, sink)) for i, sink in enumerate(sinks)]
    try:
        remaining = len(sinks)
        while remaining:
            index, event = await queue.get()
            remaining -= isinstance(event, Finished)
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


def _at(chunk: dict[str, Any], index: int) -> dict[str, Any]:
    chunk["choices"][0]["index"] = index
    return chunk


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
