"""Offline inference through onnxruntime-genai: load, validate, schedule, stream."""

from edge_agent.runtime import _og  # noqa: F401 - the telemetry opt-out comes first
from edge_agent.runtime.engine import ChatMessage, LoadedModel, RuntimeSettings
from edge_agent.runtime.errors import (
    AgentRuntimeError,
    ContextLengthExceeded,
    InvalidRequest,
    ModelFolderError,
    ModelLoadError,
    NotReady,
    Overloaded,
)
from edge_agent.runtime.model_folder import ModelFolder, inspect_model_folder
from edge_agent.runtime.sampling import SamplingParams
from edge_agent.runtime.scheduler import (
    Event,
    Finished,
    FinishReason,
    Scheduler,
    SchedulerLimits,
    Sink,
    Submission,
    TextDelta,
)

__all__ = [
    "AgentRuntimeError",
    "ChatMessage",
    "ContextLengthExceeded",
    "Event",
    "FinishReason",
    "Finished",
    "InvalidRequest",
    "LoadedModel",
    "ModelFolder",
    "ModelFolderError",
    "ModelLoadError",
    "NotReady",
    "Overloaded",
    "RuntimeSettings",
    "SamplingParams",
    "Scheduler",
    "SchedulerLimits",
    "Sink",
    "Submission",
    "TextDelta",
    "inspect_model_folder",
]
