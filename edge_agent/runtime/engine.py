"""A loaded model: onnxruntime-genai session, tokenizer, and the settings it runs with."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtime._og import og
from edge_agent.runtime.adapters import LoadedAdapters
from edge_agent.runtime.errors import InvalidRequest, ModelLoadError
from edge_agent.runtime.machine import usable_cores
from edge_agent.runtime.model_folder import ModelFolder, inspect_model_folder
from edge_agent.runtime.sampling import SamplingParams

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "dml", "webgpu", "auto")


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """How a model runs on this machine. `intra_op_threads == 0`: use every usable core.

    The builder's own config leaves the session on about one core; on a 2-core machine
    both cores give +60-75% decode speed (NOTES.md), so the default is all of them.
    """

    intra_op_threads: int = 0
    execution_provider: str = "cpu"


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[dict[str, Any], ...] = ()  # an assistant's calls, OpenAI's shape
    tool_call_id: str | None = None  # a tool result: the call it answers

    def as_template_input(self) -> dict[str, Any]:
        item: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            item["tool_calls"] = list(self.tool_calls)
        if self.tool_call_id is not None:
            item["tool_call_id"] = self.tool_call_id
        return item


# A tool name no template would print unless it renders the `tools` it is given.
_PROBE_TOOL = "edge_agent_probe_tool"


class LoadedModel:
    def __init__(
        self,
        *,
        name: str,
        folder: ModelFolder,
        model: Any,
        provider: str,
        threads: int,
        load_seconds: float,
    ) -> None:
        self.name = name
        self.folder = folder
        self.model = model
        self.tokenizer = og.Tokenizer(model)
        self.provider = provider
        self.threads = threads
        self.load_seconds = load_seconds
        self.eos_token_ids = frozenset(folder.eos_token_ids)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.supports_guidance = self._probe_guidance()
        self.renders_tools = self._probe_tools()
        self.adapters = LoadedAdapters(model, folder.path)

    @property
    def context_length(self) -> int:
        return self.folder.context_length

    @property
    def kv_bytes_per_token(self) -> int:
        """The KV cache's size per token: float32 on CPU, float16 on the GPU providers."""
        return self.folder.kv_values_per_token * (4 if self.provider == "cpu" else 2)

    @classmethod
    def load(cls, name: str, path: Path, settings: RuntimeSettings) -> LoadedModel:
        folder = inspect_model_folder(path)
        threads = settings.intra_op_threads or usable_cores()
        wanted = _resolve_provider(settings.execution_provider)
        started = time.perf_counter()
        try:
            model, provider = _load_with_fallback(folder.path, wanted, threads)
        except Exception as exc:  # the native loader raises plain RuntimeError
            raise ModelLoadError(f"onnxruntime-genai could not load {folder.path}: {exc}") from exc
        loaded = cls(
            name=name,
            folder=folder,
            model=model,
            provider=provider,
            threads=threads,
            load_seconds=time.perf_counter() - started,
        )
        log.info(
            "loaded model %s from %s: provider %s, %d threads, %.2f s",
            name,
            folder.path,
            provider,
            threads,
            loaded.load_seconds,
        )
        return loaded

    # --- prompts -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def chat_prompt(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = ()
    ) -> str:
        """The prompt for `messages`; `tools` (OpenAI's shape) reach the template as its
        `tools` variable, as transformers passes them (see `renders_tools`)."""
        payload = json.dumps([m.as_template_input() for m in messages])
        if self.folder.has_chat_template:
            if tools:
                return str(
                    self.tokenizer.apply_chat_template(
                        payload,
                        tools=json.dumps(list(tools)),
                        add_generation_prompt=True,
                    )
                )
            return str(self.tokenizer.apply_chat_template(payload, add_generation_prompt=True))
        # A folder without a template still chats, in a plain transcript format.
        lines = [f"{m.role}: {m.content}" for m in messages]
        return "\n".join([*lines, "assistant:"])

    def decoder_stream(self) -> Any:
        return self.tokenizer.create_stream()

    # --- generation ----------------------------------------------------------------------

    def new_generator(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, max_length: int
    ) -> Any:
        """One generator for prompts that share sampling params; the prefill runs here."""
        gen_params = og.GeneratorParams(self.model)
        options: dict[str, Any] = {
            "max_length": max_length,
            "batch_size": len(prompts),
            "do_sample": not params.greedy,
        }
        if not params.greedy:
            options["temperature"] = params.temperature
            options["top_p"] = params.top_p
            options["top_k"] = params.top_k or self.folder.vocab_size
        if params.ignore_eos:
            options["min_length"] = max_length
        if params.seed is not None:
            options["random_seed"] = params.seed
        gen_params.set_search_options(**options)
        if params.json_schema is not None:
            gen_params.set_guidance("json_schema", params.json_schema)
        if params.lark_grammar is not None:
            gen_params.set_guidance("lark_grammar", params.lark_grammar)
        generator = og.Generator(self.model, gen_params)
        if params.adapter is not None:
            self.adapters.activate(generator, params.adapter)
        if len(prompts) == 1:
            generator.append_tokens(np.asarray(prompts[0], dtype=np.int32))
        else:
            width = max(len(p) for p in prompts)
            batch = np.full((len(prompts), width), self.pad_token_id, dtype=np.int32)
            for row, prompt in enumerate(prompts):
                batch[row, : len(prompt)] = prompt
            generator.append_tokens(batch)
        return generator

    def check_guidance(self, params: SamplingParams) -> None:
        if params.guided and not self.supports_guidance:
            field = "tools" if params.lark_grammar is not None else "response_format"
            raise InvalidRequest(
                field,
                f"{field} needs onnxruntime-genai built with guidance (llguidance), "
                "and the installed wheel has none",
            )

    def _probe_tools(self) -> bool:
        """Whether the chat template prints the tools it is given (else the caller must
        describe them in the messages)."""
        if not self.folder.has_chat_template:
            return False
        tool = {"type": "function", "function": {"name": _PROBE_TOOL, "parameters": {}}}
        try:
            prompt = self.chat_prompt([ChatMessage("user", "x")], [tool])
        except Exception:  # a template that fails on tools cannot render them
            return False
        return _PROBE_TOOL in prompt

    def _probe_guidance(self) -> bool:
        try:
            og.GeneratorParams(self.model).set_guidance("json_schema", '{"type": "object"}')
        except Exception:  # the wheel was built without llguidance
            return False
        return True


def _resolve_provider(requested: str) -> str:
    if requested not in PROVIDERS:
        raise ModelLoadError(
            f"unknown execution provider '{requested}': choose one of {', '.join(PROVIDERS)}"
        )
    if requested == "auto":
        return "cuda" if og.is_cuda_available() else "cpu"
    return requested


def _load_with_fallback(path: Path, provider: str, threads: int) -> tuple[Any, str]:
    def attempt(chosen: str) -> Any:
        config = og.Config(str(path))
        config.clear_providers()
        if chosen != "cpu":
            config.append_provider(chosen)
        options = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
        config.overlay(json.dumps(options))
        return og.Model(config)

    if provider == "cpu":
        return attempt("cpu"), "cpu"
    try:
        return attempt(provider), provider
    except Exception as exc:
        log.warning(
            "execution provider %s is not usable here (%s); falling back to cpu", provider, exc
        )
        return attempt("cpu"), "cpu"
