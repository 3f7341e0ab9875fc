"""A conversation with a model from the terminal, without the HTTP server."""

from __future__ import annotations

from typing import TextIO

from edge_agent.runtime import (
    AgentRuntimeError,
    ChatMessage,
    Finished,
    FinishReason,
    SamplingParams,
    TextDelta,
)
from edge_agent.runtime.service import ModelService
from edge_agent.runtime.sinks import QueueSink


class SessionError(Exception):
    pass


class ChatSession:
    def __init__(self, service: ModelService, system: str | None = None) -> None:
        self.service = service
        self.name = service.name
        self.system = system
        self.history: list[ChatMessage] = []  # the turns so far, without the system prompt

    def clear(self) -> None:
        """Forget the conversation; the system prompt stays."""
        self.history = []

    def set_system(self, text: str) -> None:
        self.system = text

    @classmethod
    def open(cls, service: ModelService, system: str | None = None) -> ChatSession:
        service.load()
        if service.error is not None:
            raise SessionError(str(service.error))
        return cls(service, system)

    def params(self, **options: object) -> SamplingParams:
        try:
            return SamplingParams(**options)  # type: ignore[arg-type]
        except AgentRuntimeError as exc:
            raise SessionError(str(exc)) from exc

    def reply(
        self,
        text: str,
        params: SamplingParams,
        out: TextIO,
        *,
        raw: bool = False,
        remember: bool = True,
    ) -> Finished:
        model, _ = self.service.require()
        turn = [*self.history, ChatMessage("user", text)]
        system = [ChatMessage("system", self.system)] if self.system else []
        prompt = text if raw else model.chat_prompt([*system, *turn])
        sink = QueueSink()
        try:
            submission = self.service.submit(model.encode(prompt), params, sink)
        except AgentRuntimeError as exc:
            raise SessionError(str(exc)) from exc
        answer: list[str] = []
        try:
            for event in sink:
                if isinstance(event, TextDelta):
                    answer.append(event.text)
                    out.write(event.text)
                    out.flush()
                elif event.reason is FinishReason.ERROR:
                    raise SessionError(f"generation failed: {event.error}")
                else:
                    if remember:
                        self.history = [*turn, ChatMessage("assistant", "".join(answer))]
                    return event
        finally:
            submission.cancel()
        raise SessionError("generation ended without a result")
