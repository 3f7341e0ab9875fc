"""Errors of the inference runtime, split by who is at fault.

AgentRuntimeError (base)
├── ModelFolderError      the model folder is missing files or has a malformed config
├── ModelLoadError        onnxruntime-genai could not load a folder that looked valid
│   ├── AdapterBaseUnavailable  a LoRA adapter's base is not installed, or another version
│   └── AdapterDoesNotFit       a LoRA adapter's tensors are not the ones its base takes
├── InvalidRequest        the caller asked for something wrong (names the parameter)
│   └── ContextLengthExceeded
├── Overloaded            the queue is full: retry later
└── NotReady              the model is still loading or the runtime has stopped
"""

from __future__ import annotations

from pathlib import Path


class AgentRuntimeError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelFolderError(AgentRuntimeError):
    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ModelLoadError(AgentRuntimeError):
    pass


class ModelTooLarge(ModelLoadError):
    """The model alone needs more than the whole memory budget: no eviction can help."""


class AdapterBaseUnavailable(ModelLoadError):
    pass


class AdapterDoesNotFit(ModelLoadError):
    pass


class InvalidRequest(AgentRuntimeError):
    def __init__(self, param: str | None, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code


class ContextLengthExceeded(InvalidRequest):
    def __init__(self, message: str) -> None:
        super().__init__("messages", message, code="context_length_exceeded")


class Overloaded(AgentRuntimeError):
    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class NotReady(AgentRuntimeError):
    def __init__(self, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
