"""Prometheus metrics of one API instance (its own registry, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The `_created` series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.responses = Counter(
            "edge_agent_requests",
            "API responses by endpoint and HTTP status code, refusals included",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "edge_agent_rejections",
            "Requests refused before any work or for overload (401, 403, 408, 413, 429, 503), "
            "by reason",
            ["reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "edge_agent_errors",
            "Other error responses (400, 404, 500...), by class (the error's code or type)",
            ["class"],
            registry=self.registry,
        )
        # Counted by the generation when it ends: a stream that fails after its 200 header
        # counts here with the error's status.
        self.requests = Counter(
            "edge_agent_generations",
            "Generation requests by endpoint and how they ended (an error status for a "
            "stream that failed after it began)",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.model_requests = Counter(
            "edge_agent_model_generations",
            "Generation requests by model and how they ended",
            ["model", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "edge_agent_tokens",
            "Tokens processed, by kind (prompt or completion)",
            ["kind"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "edge_agent_request_duration_seconds",
            "Time from request to the last byte of the answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "edge_agent_time_to_first_token_seconds",
            "Time from request to the first generated text",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.token_seconds = Histogram(
            "edge_agent_time_per_output_token_seconds",
            "Mean time per generated token after the first, per request",
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "edge_agent_queue_depth", "Requests waiting for a decode slot", registry=self.registry
        )
        self.active = Gauge(
            "edge_agent_active_sequences", "Sequences being generated", registry=self.registry
        )

        self.prompt_cache_lookups = Counter(
            "edge_agent_prompt_cache_lookups",
            "Requests that asked the prompt cache, by result (hit or miss)",
            ["result"],
            registry=self.registry,
        )
        self.prompt_cache_reused_tokens = Counter(
            "edge_agent_prompt_cache_reused_tokens",
            "Prompt tokens whose prefill the prompt cache saved",
            registry=self.registry,
        )
        self.prompt_cache_bytes = Gauge(
            "edge_agent_prompt_cache_bytes",
            "Memory held by kept prompt prefixes, all models",
            registry=self.registry,
        )

    def watch_prompt_cache(self, nbytes: Callable[[], float]) -> None:
        self.prompt_cache_bytes.set_function(nbytes)

    def watch(self, queue_depth: Callable[[], float], active: Callable[[], float]) -> None:
        self.queue_depth.set_function(queue_depth)
        self.active.set_function(active)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
