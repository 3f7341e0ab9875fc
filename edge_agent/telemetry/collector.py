"""The recorder the agent calls as things happen: O(1) per event, one short lock.

A request is recorded once, when it finishes (never per token), so the decode loop pays a
dict lookup, a bisect over ten edges and a few additions per request: far below 1% of a
generation that takes tens of milliseconds per token. The lock is held only for those
additions; nothing here does I/O. Whatever it is given is reduced to counts and bucket
cells at once: no latency, prompt length or time of day is kept per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edge_agent.protocol.telemetry import (
    LOAD_EDGES_S,
    PEAK_MEMORY_EDGES_MIB,
    PER_TOKEN_EDGES_S,
    TTFT_EDGES_S,
    ErrorClass,
    UpdateOutcome,
)
from edge_agent.telemetry.aggregate import ClosedWindow, Release, Tally, Windows, bucket


def _release(model: str | None, version: str | None) -> Release:
    if model is None or version is None:
        return None
    return (model, version)


class Collector:
    def __init__(self, window_seconds: int, *, clock: Callable[[], float] = time.time) -> None:
        self._windows = Windows(window_seconds)
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def window_seconds(self) -> int:
        return self._windows.window_seconds

    def _tally(self, release: Release) -> Tally:
        # Called with the lock held.
        return self._windows.tally(self._clock(), release)

    def record_request(
        self,
        model: str,
        version: str,
        *,
        ttft_s: float,
        per_token_s: float,
        tokens_in: int,
        tokens_out: int,
    ) -> None:
        """A finished request. With no output token, pass the time to the end as ttft_s
        and 0.0 as per_token_s: every request lands in both histograms exactly once."""
        ttft_cell = bucket(TTFT_EDGES_S, ttft_s)
        per_token_cell = bucket(PER_TOKEN_EDGES_S, per_token_s)
        tokens_in, tokens_out = max(tokens_in, 0), max(tokens_out, 0)
        with self._lock:
            tally = self._tally((model, version))
            tally.requests += 1
            tally.tokens_in += tokens_in
            tally.tokens_out += tokens_out
            tally.ttft[ttft_cell] += 1
            tally.per_token[per_token_cell] += 1

    def record_error(
        self, error: ErrorClass, model: str | None = None, version: str | None = None
    ) -> None:
        """A failed request or load, by class; model None when no release was involved."""
        with self._lock:
            errors = self._tally(_release(model, version)).errors
            errors[error] = errors.get(error, 0) + 1

    def record_rejection(self, model: str | None = None, version: str | None = None) -> None:
        """A request refused because the queue was full."""
        with self._lock:
            self._tally(_release(model, version)).rejections += 1

    def record_load(
        self, model: str, version: str, *, seconds: float, peak_memory_mib: float
    ) -> None:
        """A model load that succeeded: how long it took and the peak memory reached."""
        load_cell = bucket(LOAD_EDGES_S, seconds)
        memory_cell = bucket(PEAK_MEMORY_EDGES_MIB, peak_memory_mib)
        with self._lock:
            tally = self._tally((model, version))
            tally.loads[load_cell] += 1
            tally.peak_memory[memory_cell] += 1

    def record_update_outcome(self, model: str, version: str, outcome: UpdateOutcome) -> None:
        """How the install of release `version` of `model` ended."""
        with self._lock:
            outcomes = self._tally((model, version)).update_outcomes
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def record_restart(self, *, crashed: bool) -> None:
        """The agent started; `crashed` when the previous run did not stop cleanly."""
        with self._lock:
            tally = self._tally(None)
            tally.restarts += 1
            tally.crashes += int(crashed)

    def close_due(self) -> list[ClosedWindow]:
        """Take the windows that have ended, oldest first."""
        with self._lock:
            return self._windows.close_due(self._clock())

    def close_all(self) -> list[ClosedWindow]:
        """Take every window, the open one too (at a clean stop)."""
        with self._lock:
            return self._windows.close_all()
