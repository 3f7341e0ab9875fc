"""Generation through the real onnxruntime-genai runtime on the tiny model."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from edge_agent.runtime import (
    ChatMessage,
    ContextLengthExceeded,
    Finished,
    FinishReason,
    LoadedModel,
    ModelLoadError,
    Overloaded,
    RuntimeSettings,
    SamplingParams,
    TextDelta,
)
from edge_agent.runtime.machine import usable_cores
from edge_agent.runtime.service import ModelService
from edge_agent.runtime.sinks import QueueSink
from tests.conftest import FinishLog, make_service


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path) -> ModelService:
    svc = make_service(tiny_model_dir, max_active_sequences=4, max_queued_requests=8)
    yield svc
    svc.stop()


def generate(service: ModelService, prompt: str, params: SamplingParams) -> tuple[str, Finished]:
    model, _ = service.require()
    sink = QueueSink()
    service.submit(model.encode(prompt), params, sink)
    text = []
    for event in sink:
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            return "".join(text), event
    raise AssertionError("no finish event")


def test_threads_default_to_usable_cores(service: ModelService) -> None:
    assert service.model is not None
    assert service.model.threads == usable_cores()
    assert service.model.provider == "cpu"


def test_unavailable_provider_falls_back_to_cpu_and_says_so(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    model = LoadedModel.load("t", tiny_model_dir, RuntimeSettings(execution_provider="cuda"))
    assert model.provider == "cpu"
    assert "falling back to cpu" in caplog.text
    assert "provider cpu" in caplog.text


def test_unknown_provider_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown execution provider 'tpu'"):
        LoadedModel.load("t", tiny_model_dir, RuntimeSettings(execution_provider="tpu"))


def test_chat_template_from_the_model_folder(service: ModelService) -> None:
    model, _ = service.require()
    prompt = model.chat_prompt([ChatMessage("system", "be brief"), ChatMessage("user", "hi")])
    assert prompt == (
        "<|im_start|>system\nbe brief<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_max_tokens_and_token_accounting(service: ModelService) -> None:
    model, _ = service.require()
    text, done = generate(service, "def main():", SamplingParams(max_tokens=12, temperature=0.8))
    assert done.reason is FinishReason.LENGTH
    assert done.completion_tokens == 12
    assert done.prompt_tokens == len(model.encode("def main():"))
    assert text


def test_greedy_is_deterministic(service: ModelService) -> None:
    params = SamplingParams(max_tokens=16, temperature=0)
    assert generate(service, "import os", params)[0] == generate(service, "import os", params)[0]


def test_same_seed_same_text_different_seed_different_text(service: ModelService) -> None:
    def sample(seed: int) -> str:
        return generate(service, "class A:", SamplingParams(max_tokens=24, seed=seed))[0]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_stop_string_ends_generation(service: ModelService) -> None:
    full, _ = generate(service, "x = 1", SamplingParams(max_tokens=40, seed=3))
    stop = full[10:13]
    text, done = generate(service, "x = 1", SamplingParams(max_tokens=40, seed=3, stop=(stop,)))
    assert done.reason is FinishReason.STOP
    assert text == full[: full.find(stop)]


def test_prompt_longer_than_context_is_refused(service: ModelService) -> None:
    with pytest.raises(ContextLengthExceeded, match="context"):
        service.submit([5] * 2048, SamplingParams(), QueueSink())
    with pytest.raises(ContextLengthExceeded, match="max_tokens"):
        service.submit([5] * 2000, SamplingParams(max_tokens=100), QueueSink())


def test_concurrent_requests_each_get_their_own_stream(service: ModelService) -> None:
    """Batched greedy decoding gives every request exactly what it gets alone."""
    prompts = ["import os", "def f(x):", "class Foo(object):\n    pass", "for i in range(10):"]
    params = SamplingParams(max_tokens=20, temperature=0)
    alone = [generate(service, p, params)[0] for p in prompts]
    together: list[str | None] = [None] * len(prompts)

    def worker(i: int) -> None:
        together[i] = generate(service, prompts[i], params)[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert together == alone


class BlockingSink:
    """Holds the decode thread on its first event, so the queue state is deterministic."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[object] = []

    def wait_taken(self, timeout_seconds: float) -> None:
        pass

    def put(self, event: object) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)
        self.events.append(event)


def test_full_queue_is_refused_with_retry_after(tiny_model_dir: Path) -> None:
    service = make_service(tiny_model_dir, max_active_sequences=1, max_queued_requests=1)
    try:
        blocker = BlockingSink()
        service.submit([5, 6, 7], SamplingParams(max_tokens=5), blocker)
        assert blocker.entered.wait(10)
        service.submit([5, 6, 7], SamplingParams(max_tokens=5), QueueSink())  # waits in queue
        with pytest.raises(Overloaded) as info:
            service.submit([5, 6, 7], SamplingParams(max_tokens=5), QueueSink())
        assert info.value.retry_after_seconds == 1
        assert "retry" in str(info.value)
        blocker.release.set()
    finally:
        service.stop()


def test_cancel_frees_the_slot_at_once(tiny_model_dir: Path) -> None:
    log = FinishLog()
    service = make_service(tiny_model_dir, log, max_active_sequences=1, max_queued_requests=4)
    try:
        first = service.submit(
            [5, 6], SamplingParams(max_tokens=2000, ignore_eos=True), QueueSink()
        )
        sink = QueueSink()
        service.submit([5, 6], SamplingParams(max_tokens=3), sink)
        first.cancel()
        events = list(sink)
        assert isinstance(events[-1], Finished) and events[-1].reason is FinishReason.LENGTH
        done = log.wait_for(2)
        assert done[0].reason is FinishReason.CANCELLED
        assert done[0].completion_tokens < 2000
        assert service.scheduler is not None and service.scheduler.active_sequences == 0
    finally:
        service.stop()


def test_json_schema_without_guidance_in_the_wheel_is_a_clear_400(service: ModelService) -> None:
    from edge_agent.runtime import InvalidRequest

    model, _ = service.require()
    supported = model.supports_guidance
    try:
        model.supports_guidance = False
        with pytest.raises(InvalidRequest, match="built with guidance") as info:
            service.submit([5], SamplingParams(json_schema="{}"), QueueSink())
        assert info.value.param == "response_format"
    finally:
        model.supports_guidance = supported
