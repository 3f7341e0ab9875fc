"""Tool calling through the official openai client on the tiny model (random weights: the
grammar alone makes its calls well formed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import openai
import pytest

from edge_agent.runtime import ChatMessage, LoadedModel, RuntimeSettings

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK: Any = [{"role": "user", "content": "What is the weather in Oslo?"}]


def valid_weather(arguments: str) -> bool:
    args = json.loads(arguments)
    return (
        set(args) == {"city", "unit", "days"}
        and args["city"] in ("Paris", "Oslo", "Lima")
        and args["unit"] in ("c", "f")
        and isinstance(args["days"], int)
        and 1 <= args["days"] <= 7
    )


def valid_time(arguments: str) -> bool:
    return json.loads(arguments) in ({"zone": "UTC"}, {"zone": "CET"})


VALID = {"get_weather": valid_weather, "get_time": valid_time}


@pytest.fixture
def server(serve):  # type: ignore[no-untyped-def]
    return serve()


@pytest.fixture
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, **extra: Any) -> Any:
    args: dict[str, Any] = {"model": "tiny", "messages": ASK, "max_tokens": 120, "temperature": 0}
    return client.chat.completions.create(**{**args, **extra})


def test_a_named_function_is_called_with_valid_arguments(client: openai.OpenAI) -> None:
    tool_choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = ask(client, tools=[WEATHER, CLOCK], tool_choice=tool_choice)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls and all(c.function.name == "get_weather" for c in calls)
    assert all(valid_weather(c.function.arguments) for c in calls)
    assert len({c.id for c in calls}) == len(calls)


def test_required_calls_one_of_the_tools_streaming_and_not(client: openai.OpenAI) -> None:
    extra = {"tools": [WEATHER, CLOCK], "tool_choice": "required"}
    whole = ask(client, **extra).choices[0].message.tool_calls
    assert whole and all(VALID[c.function.name](c.function.arguments) for c in whole)
    chunks = list(ask(client, **extra, stream=True))
    streamed = [
        call
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for call in c.choices[0].delta.tool_calls
    ]
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in whole
    ]
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["tool_calls"]


def test_parallel_tool_calls_false_makes_exactly_one_call(client: openai.OpenAI) -> None:
    reply = ask(client, tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False)
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1


def test_auto_answers_in_text_or_with_valid_calls(client: openai.OpenAI) -> None:
    for question in ("hello", "weather in Lima for 3 days?", "<tool_call>"):
        reply = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": question}],
            tools=[WEATHER],
            max_tokens=60,
            temperature=0,
        )
        message: Any = reply.choices[0].message
        if message.tool_calls:
            assert reply.choices[0].finish_reason == "tool_calls"
            assert all(valid_weather(c.function.arguments) for c in message.tool_calls)
        else:
            assert message.content is not None and not message.content.startswith("<")


def test_a_tool_loop_sends_results_back_as_tool_messages(client: openai.OpenAI) -> None:
    def get_weather(city: str, unit: str, days: int) -> str:
        return json.dumps({"city": city, "forecast": ["sunny"] * days, "unit": unit})

    messages: list[Any] = list(ASK)
    first = ask(client, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    call: Any = first.choices[0].message.tool_calls[0]
    result = get_weather(**json.loads(call.function.arguments))
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    final = client.chat.completions.create(
        model="tiny",
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=8,
        temperature=0,
    )
    assert final.choices[0].finish_reason == "length"
    assert final.choices[0].message.tool_calls is None
    # The call and its result reached the prompt: it grew by at least the result's length.
    without_tools = client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=1, temperature=0
    )
    assert final.usage is not None and without_tools.usage is not None
    assert final.usage.prompt_tokens > without_tools.usage.prompt_tokens + len(result) // 4


def test_tools_reach_the_prompt_even_when_the_template_ignores_them(
    client: openai.OpenAI,
) -> None:
    plain = ask(client, max_tokens=1)
    with_tools = ask(client, max_tokens=1, tools=[WEATHER], tool_choice="none")
    auto = ask(client, max_tokens=1, tools=[WEATHER])
    assert plain.usage and with_tools.usage and auto.usage
    assert with_tools.usage.prompt_tokens == plain.usage.prompt_tokens  # none: no tools
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens + 40


def test_a_template_that_renders_tools_gets_them(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").write_text(
        # Qwen2.5's way: each tool printed with tojson. (onnxruntime-genai 0.18's template
        # engine hands `{% for t in tools %}` a rewritten, lossy tool; `tool` works.)
        "{% if tools %}<tools>{%- for tool in tools %}{{- tool | tojson }};{% endfor %}</tools>"
        "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% for c in m.tool_calls or [] %}[call {{ c.function.name }}]{% endfor %}"
        "<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    )
    model = LoadedModel.load("t", folder, RuntimeSettings())
    assert model.renders_tools
    call = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": {}}}
    messages = [ChatMessage("user", "hi"), ChatMessage("assistant", "", (call,))]
    prompt = model.chat_prompt(messages, [WEATHER, CLOCK])
    assert prompt.startswith(f"<tools>{json.dumps(WEATHER)};{json.dumps(CLOCK)};</tools>")
    assert "[call get_time]" in prompt


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools.1.function.name"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ],
)
def test_bad_tool_requests_are_400_naming_the_field(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, **extra)
    assert caught.value.param == param


def test_a_tool_message_needs_its_call_id(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="tool_call_id"):
        ask(client, messages=[*ASK, {"role": "tool", "content": "42"}])


def test_user_is_accepted_and_ignored(client: openai.OpenAI) -> None:
    assert ask(client, max_tokens=2, user="someone").choices[0].message.content is not None
