"""Fixed windows of raw counts, and how a closed window becomes TelemetryReports.

Raw counts (a `Tally` per release and window) never leave the device. A window closes once
its end has passed; `to_report` then turns each tally into one report, in this order:

1. optional Laplace noise (edge_agent.telemetry.privacy), applied to the raw counts;
2. coarsening, the rule the schema documents: an event count of 1..SMALL_COUNT-1 becomes
   SMALL_COUNT (0 and larger counts stay), so a single request cannot be told from a few;
   token totals are rounded up to a multiple of TOKEN_QUANTUM, so the length of one prompt
   cannot be read off the total. Coarsening makes totals biased upward, never downward.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from edge_agent.protocol.telemetry import (
    LOAD_CELLS,
    PEAK_MEMORY_CELLS,
    PER_TOKEN_CELLS,
    SMALL_COUNT,
    TOKEN_QUANTUM,
    TTFT_CELLS,
    ErrorClass,
    HardwareClass,
    TelemetryReport,
    UpdateOutcome,
    iso_week,
    zeros,
)

# (model, version) of a release; None for the agent-wide tally (restarts, crashes).
Release = tuple[str, str] | None
# noise(value, kind) -> noisy value; kind is "count" or "tokens" (their sensitivities differ).
Noise = Callable[[int, str], int]
K = TypeVar("K", ErrorClass, UpdateOutcome)


def bucket(edges: Sequence[float], value: float) -> int:
    """The histogram cell of `value`: cell i holds edges[i-1] <= value < edges[i]."""
    return bisect_right(edges, value)


def coarsen_count(count: int) -> int:
    """0 stays 0, 1..SMALL_COUNT-1 become SMALL_COUNT, larger counts stay exact."""
    return SMALL_COUNT if 0 < count < SMALL_COUNT else count


def coarsen_tokens(tokens: int) -> int:
    """Rounded up to a multiple of TOKEN_QUANTUM (0 stays 0)."""
    return -(-tokens // TOKEN_QUANTUM) * TOKEN_QUANTUM


@dataclass
class Tally:
    """Raw counts of one release over one window. Mutated under the collector's lock."""

    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    ttft: list[int] = field(default_factory=partial(zeros, TTFT_CELLS))
    per_token: list[int] = field(default_factory=partial(zeros, PER_TOKEN_CELLS))
    errors: dict[ErrorClass, int] = field(default_factory=dict)
    rejections: int = 0
    loads: list[int] = field(default_factory=partial(zeros, LOAD_CELLS))
    peak_memory: list[int] = field(default_factory=partial(zeros, PEAK_MEMORY_CELLS))
    update_outcomes: dict[UpdateOutcome, int] = field(default_factory=dict)
    restarts: int = 0
    crashes: int = 0


@dataclass(frozen=True)
class ClosedWindow:
    start_s: int  # Unix seconds, a multiple of window_seconds
    window_seconds: int
    tallies: dict[Release, Tally]

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.start_s, UTC)

    @property
    def period(self) -> str:
        return iso_week(self.start)


class Windows:
    """Tallies by aligned window start and release. Not thread-safe: the collector locks."""

    def __init__(self, window_seconds: int) -> None:
        self.window_seconds = window_seconds
        self._open: dict[int, dict[Release, Tally]] = {}

    def tally(self, now_s: float, release: Release) -> Tally:
        start = int(now_s // self.window_seconds) * self.window_seconds
        window = self._open.get(start)
        if window is None:
            window = self._open[start] = {}
        found = window.get(release)
        if found is None:
            found = window[release] = Tally()
        return found

    def close_due(self, now_s: float) -> list[ClosedWindow]:
        """Remove and return, oldest first, the windows whose end is at or before `now_s`."""
        due = sorted(s for s in self._open if s + self.window_seconds <= now_s)
        return [ClosedWindow(s, self.window_seconds, self._open.pop(s)) for s in due]

    def close_all(self) -> list[ClosedWindow]:
        """Every window, open ones too (at a clean stop)."""
        return self.close_due(float("inf"))


def _exact(value: int, _kind: str) -> int:
    return value


def to_report(
    window: ClosedWindow,
    release: Release,
    tally: Tally,
    *,
    pseudonym: str,
    agent_version: str,
    hardware: HardwareClass,
    noise: Noise | None = None,
    dp_epsilon: float | None = None,
    token: str | None = None,
) -> TelemetryReport:
    """The report of one tally: noised (when `noise` is given), then coarsened."""
    add = noise or _exact

    def count(value: int) -> int:
        return coarsen_count(add(value, "count"))

    def cells(values: list[int]) -> list[int]:
        return [count(v) for v in values]

    def by_class(values: Mapping[K, int], members: Iterable[K]) -> dict[K, int]:
        # Under noise every class gets a noisy count, zeros too: noising only the classes
        # that occurred would reveal which did. Zero results are left out either way.
        noisy = {key: count(values.get(key, 0)) for key in (values if noise is None else members)}
        return {key: v for key, v in noisy.items() if v}

    common: dict[str, Any] = {
        "pseudonym": pseudonym,
        "period": window.period,
        "window_start": window.start,
        "window_seconds": window.window_seconds,
        "agent_version": agent_version,
        "hardware": hardware,
        "errors": by_class(tally.errors, ErrorClass),
        "rejections": count(tally.rejections),
        "dp_epsilon": dp_epsilon,
        "token": token,
    }
    if release is None:
        return TelemetryReport(
            **common, restarts=count(tally.restarts), crashes=count(tally.crashes)
        )
    model, version = release
    return TelemetryReport(
        **common,
        model=model,
        version=version,
        requests=count(tally.requests),
        tokens_in=coarsen_tokens(add(tally.tokens_in, "tokens")),
        tokens_out=coarsen_tokens(add(tally.tokens_out, "tokens")),
        ttft_histogram=cells(tally.ttft),
        per_token_histogram=cells(tally.per_token),
        load_histogram=cells(tally.loads),
        peak_memory_histogram=cells(tally.peak_memory),
        update_outcomes=by_class(tally.update_outcomes, UpdateOutcome),
    )
