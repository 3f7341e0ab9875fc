"""Request bodies of the OpenAI-compatible endpoints.

Unknown fields are refused by name. OpenAI fields this server does not implement are
accepted only with their neutral value, so a client never silently gets less than it
asked for.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge_agent.runtime import ChatMessage, InvalidRequest, SamplingParams

# Deeper schemas make the grammar compiler give up ("recursion limit exceeded"); no real
# response format comes near this.
MAX_SCHEMA_DEPTH = 64
INT32_MAX = 2**31 - 1  # onnxruntime-genai's search options are 32-bit


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCallIn(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _shape_fits_role(self) -> ChatMessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.content is None and not self.tool_calls:
            raise ValueError("content is required (it may be null only beside tool_calls)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def to_runtime(self) -> ChatMessage:
        calls = tuple(
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": _json_or_text(call)},
            }
            for call in self.tool_calls or ()
        )
        return ChatMessage(self.role, self.text(), calls, self.tool_call_id)


def _json_or_text(call: ToolCallIn) -> Any:
    """Templates print arguments with `tojson`, expecting an object, as transformers has."""
    try:
        return json.loads(call.function.arguments)
    except json.JSONDecodeError:
        return call.function.arguments


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None

    @field_validator("schema_")
    @classmethod
    def _not_too_deep(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if _depth(schema) > MAX_SCHEMA_DEPTH:
            raise ValueError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        return schema


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


# Fields OpenAI defines that this server does not implement, with the value that means "off".
_NEUTRAL: dict[str, Any] = {
    "best_of": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": None,
    "top_logprobs": None,
    "logit_bias": None,
    "echo": False,
    "suffix": None,
}


# Why a field is refused, where the reason helps the caller choose what to send instead.
_UNSUPPORTED = {
    name: f"{name} is not supported: onnxruntime-genai's sampler has no presence or "
    "frequency penalty; omit it (or send 0)"
    for name in ("presence_penalty", "frequency_penalty")
}


class _GenerationRequest(_Strict):
    _implemented: ClassVar[frozenset[str]] = frozenset()  # fields of _NEUTRAL served here
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # Ollama's: how long the model stays loaded once idle (seconds or "5m"; < 0 = always)
    keep_alive: float | str | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        """JSON may carry a lone UTF-16 surrogate ("\\ud800"); it is no character, and the
        tokenizer and the JSON encoder fail on it. Refused by location, never echoed."""
        where = _lone_surrogate(data)
        if where is not None:
            raise PydanticCustomError(
                "lone_surrogate",
                "'{param}' holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                "valid Unicode text: send the text as valid UTF-8",
                {"param": ".".join(where) or "body"},
            )
        return data

    def _check_neutral(self) -> None:
        for name, neutral in _NEUTRAL.items():
            if name in self._implemented:
                continue
            value = getattr(self, name, None)
            if value is not None and value != neutral and value is not False:
                raise InvalidRequest(
                    name, _UNSUPPORTED.get(name, f"{name} is not supported by this server; omit it")
                )

    def choices(self, max_batch: int) -> int:
        """How many choices (`n`): sampled together, so at most one batch's worth."""
        n = 1 if self.n is None else self.n
        if not 1 <= n <= max_batch:
            raise InvalidRequest("n", f"n must be between 1 and {max_batch} on this agent")
        return n

    def sampling(self, json_schema: str | None = None) -> SamplingParams:
        self._check_neutral()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=self.seed,
            stop=stops,
            json_schema=json_schema,
            ignore_eos=self.ignore_eos,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_GenerationRequest):
    _implemented: ClassVar[frozenset[str]] = frozenset({"logprobs", "top_logprobs"})
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None

    @field_validator("tools")
    @classmethod
    def _tools_not_too_deep(cls, tools: list[dict[str, Any]] | None) -> Any:
        if tools is not None and _depth(tools) > MAX_SCHEMA_DEPTH:
            raise ValueError(f"the tools' schemas nest deeper than {MAX_SCHEMA_DEPTH} levels")
        return tools

    def chat_sampling(self, tool_grammar: str | None = None) -> SamplingParams:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise InvalidRequest(
                    "max_completion_tokens", "max_tokens and max_completion_tokens disagree"
                )
            self.max_tokens = self.max_completion_tokens
        schema = _json_schema(self.response_format)
        if schema is not None and tool_grammar is not None:
            raise InvalidRequest(
                "response_format",
                "response_format and tools cannot both shape one answer: send tool_choice "
                "none, or describe the answer as a tool",
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs", "top_logprobs needs logprobs: true")
        params = dataclasses.replace(
            self.sampling(schema),
            lark_grammar=tool_grammar,
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
        )
        return params


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] = Field(min_length=1)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def prompt_input(self) -> str | list[int]:
        if isinstance(self.prompt, str):
            return self.prompt
        if all(isinstance(item, str) for item in self.prompt):
            if len(self.prompt) != 1:
                raise InvalidRequest("prompt", "only one prompt per request is supported")
            return str(self.prompt[0])
        return [int(item) for item in self.prompt]


# Compact JSON unless the caller says otherwise: with free whitespace a small model can
# fill its whole answer with blank lines that the grammar allows.
_COMPACT = {"whitespace_flexible": False}


def _json_schema(fmt: ResponseFormat | None) -> str | None:
    if fmt is None or fmt.type == "text":
        return None
    schema: dict[str, Any] = {"type": "object"}
    if fmt.type == "json_schema":
        assert fmt.json_schema is not None
        schema = fmt.json_schema.schema_ or schema
    return json.dumps({"x-guidance": _COMPACT, **schema})


def _lone_surrogate(value: Any) -> tuple[str, ...] | None:
    """The path of a string (or object key) holding a lone surrogate, if any; iterative,
    so no nesting can exhaust the stack."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str) and _has_surrogate(item):
            return path
        if isinstance(item, dict):
            for key, child in item.items():
                if _has_surrogate(str(key)):
                    return (*path, "<key>")
                stack.append((child, (*path, str(key))))
        elif isinstance(item, list):
            stack.extend((child, (*path, str(index))) for index, child in enumerate(item))
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest; iterative, so no depth can exhaust the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest
