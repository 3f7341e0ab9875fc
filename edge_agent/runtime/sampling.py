"""Sampling parameters of one generation, validated with the offending field named."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.runtime.errors import InvalidRequest

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256
MAX_TOP_LOGPROBS = 20  # as OpenAI
BatchKey = tuple[object, ...]


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """`temperature == 0` means greedy decoding; `top_k == 0` means no top-k cut."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: str | None = None
    lark_grammar: str | None = None  # llguidance's Lark dialect: tool calls
    ignore_eos: bool = False  # generate exactly max_tokens: for benchmarks
    logprobs: int | None = None  # None: off; else how many alternatives per token (0-20)
    adapter: str | None = None  # the LoRA adapter active on the base (runtime.adapters)

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest("max_tokens", "max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequest("temperature", "temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest("top_p", "top_p must be greater than 0 and at most 1")
        if not 0 <= self.top_k < 2**31:  # onnxruntime-genai takes a 32-bit int
            raise InvalidRequest("top_k", "top_k must be between 0 (off) and 2147483647")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(
                "top_logprobs", f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"
            )
        if self.seed is not None and not 0 <= self.seed < 2**31:
            raise InvalidRequest("seed", "seed must be between 0 and 2147483647")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest("stop", f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        for item in self.stop:
            if not item or len(item) > MAX_STOP_LENGTH:
                raise InvalidRequest(
                    "stop", f"stop strings must hold 1 to {MAX_STOP_LENGTH} characters"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def guided(self) -> bool:
        return self.json_schema is not None or self.lark_grammar is not None

    def batch_key(self) -> BatchKey | None:
        """Requests with equal keys may share one batched generator; None: run alone.

        A seeded request runs alone so the same seed gives the same text whatever else
        is running; guided decoding keeps per-generator grammar state.
        """
        if self.seed is not None or self.guided:
            return None
        # One generator has one active adapter: the adapter is part of every key, so
        # neither a batch nor a kept prompt is ever shared across adapters.
        if self.greedy:
            return ("greedy", self.ignore_eos, self.adapter)
        return ("sample", self.ignore_eos, self.adapter, self.temperature, self.top_p, self.top_k)

    def reuse_key(self) -> BatchKey | None:
        """Requests with equal keys may continue one kept generator (the prompt cache);
        None: always start afresh.

        A generator's search options are fixed when it is built. A seeded sample must
        start its random stream afresh to repeat itself, and a grammar keeps its own state;
        greedy decoding ignores the seed.
        """
        if self.guided or (self.seed is not None and not self.greedy):
            return None
        return self.batch_key() if self.seed is None else ("greedy", self.ignore_eos, self.adapter)
