"""A release must run before it is signed: load it and generate a few tokens."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hub.registry.errors import SmokeTestFailed

if TYPE_CHECKING:
    from edge_agent.runtime.adapters import AdapterRef

SMOKE_PROMPT = "Hello! Please introduce yourself."
SMOKE_MAX_TOKENS = 8


@dataclass(frozen=True)
class SmokeResult:
    text: str
    completion_tokens: int
    load_seconds: float
    generate_seconds: float


def smoke_generate(
    model_dir: Path, *, max_tokens: int = SMOKE_MAX_TOKENS, adapter: AdapterRef | None = None
) -> SmokeResult:
    """Load `model_dir` with the agent's own runtime and generate greedily (with `adapter`
    active on it when given)."""
    # The runtime pulls in onnxruntime-genai: imported here so the CLI starts fast.
    from edge_agent.runtime import (
        ChatMessage,
        Finished,
        FinishReason,
        RuntimeSettings,
        SamplingParams,
        SchedulerLimits,
        TextDelta,
    )
    from edge_agent.runtime.service import ModelService
    from edge_agent.runtime.sinks import QueueSink

    service = ModelService("smoke-test", model_dir, RuntimeSettings(), SchedulerLimits())
    service.load()
    if service.error is not None or service.model is None:
        raise SmokeTestFailed(f"{model_dir}: the model does not load: {service.error}")
    try:
        model = service.model
        if adapter is not None:
            model.adapters.ensure(adapter)
        started = time.perf_counter()
        prompt = model.chat_prompt([ChatMessage("user", SMOKE_PROMPT)])
        sink = QueueSink()
        service.submit(
            model.encode(prompt),
            SamplingParams(
                max_tokens=max_tokens,
                temperature=0.0,
                adapter=adapter.name if adapter is not None else None,
            ),
            sink,
        )
        events = list(sink)
        seconds = time.perf_counter() - started
    except Exception as exc:  # anything the runtime raises means the release cannot serve
        raise SmokeTestFailed(f"{model_dir}: generation failed: {exc}") from exc
    finally:
        service.stop()
    done = events[-1]
    assert isinstance(done, Finished)
    if done.reason is FinishReason.ERROR:
        raise SmokeTestFailed(f"{model_dir}: generation failed: {done.error}")
    if done.completion_tokens == 0:
        raise SmokeTestFailed(f"{model_dir}: the model generated no tokens for a simple prompt")
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return SmokeResult(text, done.completion_tokens, model.load_seconds, seconds)
