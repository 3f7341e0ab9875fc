"""The benchmark shape builds, loads through the agent's own loader, and generates."""

from __future__ import annotations

import pytest

from edge_agent.runtime import FinishReason, SamplingParams
from edge_agent.runtime.sinks import QueueSink
from hub.registry import synthetic
from tests.conftest import make_service


@pytest.mark.slow
def test_small_model_generates_through_the_runtime() -> None:
    model_dir = synthetic.build(synthetic.RECIPES["small"])
    service = make_service(model_dir)
    try:
        model, _ = service.require()
        assert model.folder.vocab_size == 49152
        assert 150e6 < model.folder.weight_bytes < 260e6  # int4 weights of a 360M model
        sink = QueueSink()
        service.submit(model.encode("def main():"), SamplingParams(max_tokens=8), sink)
        done = list(sink)[-1]
        assert done.reason is FinishReason.LENGTH  # type: ignore[union-attr]
        assert done.completion_tokens == 8  # type: ignore[union-attr]
    finally:
        service.stop()
