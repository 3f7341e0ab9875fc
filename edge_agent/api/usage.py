"""What the API tells anonymous telemetry about each request: timings, token counts and
error classes, keyed by the model release that served it. Never text, never who asked.

With telemetry off there is no collector and every call returns at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.protocol.telemetry import ErrorClass
from edge_agent.runtime import Finished, FinishReason, InvalidRequest, NotReady
from edge_agent.runtime.service import ModelService
from edge_agent.telemetry.collector import Collector


@dataclass(frozen=True)
class UsageRecorder:
    collector: Collector | None = None

    def finished(
        self, service: ModelService, done: Finished, started: float, first: float | None, end: float
    ) -> None:
        release = service.release
        if self.collector is None or release is None:
            return
        if done.reason is FinishReason.ERROR:
            self.collector.record_error(ErrorClass.GENERATION, *release)
            return
        if first is None or done.completion_tokens == 0:
            ttft, per_token = end - started, 0.0
        else:
            ttft = first - started
            per_token = (end - first) / max(done.completion_tokens - 1, 1)
        self.collector.record_request(
            *release,
            ttft_s=ttft,
            per_token_s=per_token,
            tokens_in=done.prompt_tokens,
            tokens_out=done.completion_tokens,
        )

    def rejected(self, service: ModelService) -> None:
        if self.collector is not None:
            self.collector.record_rejection(*(service.release or (None, None)))

    def refused(self, exc: Exception) -> None:
        """A request refused before it reached a model (its release is not known)."""
        if self.collector is None:
            return
        if isinstance(exc, NotReady):
            self.collector.record_error(ErrorClass.NOT_READY)
        elif isinstance(exc, InvalidRequest):
            context = exc.code == "context_length_exceeded"
            self.collector.record_error(
                ErrorClass.CONTEXT_LENGTH if context else ErrorClass.INVALID_REQUEST
            )
