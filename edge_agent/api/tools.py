"""OpenAI tool calling: tools into the prompt, calls decoded under a grammar, calls read back.

Calls use the Hermes format that Qwen's, SmolLM3's and most open chat templates teach:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. The model's own template
renders the tools (its `tools` variable, as transformers passes them); a template that
ignores them gets a system message describing them in that format instead.

The call is decoded under a grammar (llguidance's Lark dialect; `%json` holds each
function's parameter schema), so every call parses and validates: `required` or a named
function forces calls; `auto` lets the model answer in text, which then may not start
with `<`, or call. `none` renders no tools and decodes freely.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.runtime import ChatMessage, InvalidRequest, LoadedModel

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# Compact JSON, as for response_format: free whitespace lets a small model ramble.
_COMPACT = {"whitespace_flexible": False}


@dataclass(frozen=True)
class ToolPlan:
    """What a request allows: which functions, whether text is allowed, how many calls."""

    tools: tuple[dict[str, Any], ...]  # the request's tool objects, for the template
    schemas: dict[str, dict[str, Any]]  # function name -> parameters schema
    names: tuple[str, ...]  # the functions the model may call now
    text_allowed: bool  # tool_choice auto
    parallel: bool

    def grammar(self) -> str:
        functions = " | ".join(f"fn{i}" for i in range(len(self.names)))
        calls = "call+" if self.parallel else "call"
        lines = [
            f"start: TEXT | {calls}" if self.text_allowed else f"start: {calls}",
            f'call: "{OPEN}" ({functions}) "{CLOSE}"',
            "TEXT: /[^<](.|\\n)*/",
        ]
        for i, name in enumerate(self.names):
            lines.append(f"fn{i}: %json {json.dumps(_call_schema(name, self.schemas[name]))}")
        return "\n".join(lines)

    def prompt(self, model: LoadedModel, messages: Sequence[ChatMessage]) -> str:
        if model.renders_tools:
            return model.chat_prompt(messages, self.tools)
        described = _with_tool_description(list(messages), self.tools)
        return model.chat_prompt([_calls_as_text(m) for m in described])


def plan_tools(
    tools: Sequence[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    parallel: bool | None,
) -> ToolPlan | None:
    """The plan for a request's tool fields; None: no tools (or tool_choice none)."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise InvalidRequest("tool_choice", "tool_choice needs a non-empty tools list")
        return None
    schemas: dict[str, dict[str, Any]] = {}
    for index, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest(f"tools.{index}", "each tool must be {type: function, function}")
        name = function.get("name")
        if not isinstance(name, str) or not name or name in schemas:
            raise InvalidRequest(f"tools.{index}.function.name", "needs a unique, non-empty name")
        parameters = function.get("parameters") or {"type": "object"}
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"tools.{index}.function.parameters", "must be a JSON schema")
        schemas[name] = parameters
    if tool_choice == "none":
        return None
    names = tuple(schemas)
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        wanted = function.get("name") if isinstance(function, dict) else None
        if tool_choice.get("type") != "function" or wanted not in schemas:
            raise InvalidRequest(
                "tool_choice",
                f"tool_choice must name one of the tools ({', '.join(names)}) as "
                '{"type": "function", "function": {"name": ...}}',
            )
        names = (str(wanted),)
    elif tool_choice not in (None, "auto", "required"):
        raise InvalidRequest(
            "tool_choice", "tool_choice must be none, auto, required or a named function"
        )
    return ToolPlan(
        tools=tuple(tools),
        schemas=schemas,
        names=names,
        text_allowed=tool_choice in (None, "auto"),
        parallel=parallel is not False,
    )


def parse_calls(text: str) -> list[dict[str, Any]] | None:
    """OpenAI tool_calls from an answer made only of calls; None: a text answer (or a
    call cut short by max_tokens)."""
    rest = text.strip()
    if not rest.startswith(OPEN):
        return None
    calls = []
    while rest:
        if not rest.startswith(OPEN) or CLOSE not in rest:
            return None
        body, _, rest = rest[len(OPEN) :].partition(CLOSE)
        rest = rest.strip()
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(call.get("arguments", {})),
                },
            }
        )
    return calls


class CallStream:
    """Streaming: text is passed on at once unless it may be the start of a call, which
    is held until the end and then sent as tool_calls."""

    def __init__(self) -> None:
        self._held = ""
        self._calling: bool | None = None  # unknown until the first non-blank text

    def feed(self, piece: str) -> str:
        if self._calling is False:
            return piece
        self._held += piece
        start = self._held.lstrip()
        if not start or OPEN.startswith(start[: len(OPEN)]):
            self._calling = True if len(start) >= len(OPEN) else None
            return ""
        self._calling = False
        text, self._held = self._held, ""
        return text

    def finish(self) -> tuple[list[dict[str, Any]] | None, str]:
        """(tool calls, or None with the text still held)."""
        held, self._held = self._held, ""
        calls = parse_calls(held) if self._calling is not False else None
        return calls, "" if calls else held


def _call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "x-guidance": _COMPACT,
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _with_tool_description(
    messages: list[ChatMessage], tools: Sequence[dict[str, Any]]
) -> list[ChatMessage]:
    listed = "\n".join(json.dumps(tool["function"]) for tool in tools)
    text = (
        "You may call functions to help with the request. Their signatures are JSON "
        f"schemas within <tools></tools>:\n<tools>\n{listed}\n</tools>\n"
        "To call a function, answer with its name and arguments as a JSON object within "
        f'{OPEN}{CLOSE} tags:\n{OPEN}\n{{"name": <function-name>, "arguments": '
        f"<arguments-json-object>}}\n{CLOSE}"
    )
    if messages and messages[0].role in ("system", "developer"):
        first = messages[0]
        return [ChatMessage(first.role, f"{first.content}\n\n{text}"), *messages[1:]]
    return [ChatMessage("system", text), *messages]


def _calls_as_text(message: ChatMessage) -> ChatMessage:
    """An assistant's calls written as it would have produced them, for templates that
    print only `content`."""
    if not message.tool_calls:
        return message
    calls = "\n".join(f"{OPEN}{json.dumps(c['function'])}{CLOSE}" for c in message.tool_calls)
    content = f"{message.content}\n{calls}" if message.content else calls
    return ChatMessage(message.role, content, tool_call_id=message.tool_call_id)
