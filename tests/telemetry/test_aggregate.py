"""Windows conserve every event; histograms account for every request; coarsening hides
small counts; the collector is cheap enough for the decode path."""

from __future__ import annotations

import itertools
import sys
import threading
import tracemalloc
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.protocol import (
    SMALL_COUNT,
    TOKEN_QUANTUM,
    TTFT_EDGES_S,
    Accelerator,
    CoresBucket,
    ErrorClass,
    HardwareClass,
    MemoryBucket,
    TelemetryReport,
    UpdateOutcome,
)
from edge_agent.telemetry.aggregate import (
    ClosedWindow,
    Release,
    Tally,
    bucket,
    coarsen_count,
    coarsen_tokens,
    to_report,
)
from edge_agent.telemetry.collector import Collector

WINDOW = 3600
T0 = 1_893_456_000  # 2030-01-01T00:00:00Z, a window boundary
HARDWARE = HardwareClass(
    cores=CoresBucket.C3_4, memory=MemoryBucket.GIB_8_16, accelerator=Accelerator.CPU
)


def report_of(window: ClosedWindow, release: Release, tally: Tally) -> TelemetryReport:
    return to_report(
        window, release, tally, pseudonym="a" * 64, agent_version="0.1.0", hardware=HARDWARE
    )


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


requests = st.lists(
    st.tuples(
        st.floats(0, 5 * WINDOW - 1),  # offset from T0
        st.sampled_from([("tiny", "1.0.0"), ("tiny", "1.1.0"), ("big", "2.0.0")]),
        st.floats(0, 100, allow_nan=False),
        st.floats(0, 5, allow_nan=False),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
    ),
    max_size=60,
)


@given(requests)
def test_windows_conserve_totals_and_histograms_count_every_request(
    events: list[tuple[float, tuple[str, str], float, float, int, int]],
) -> None:
    clock = Clock()
    collector = Collector(WINDOW, clock=clock)
    for offset, (model, version), ttft, per_token, tokens_in, tokens_out in events:
        clock.now = T0 + offset
        collector.record_request(
            model,
            version,
            ttft_s=ttft,
            per_token_s=per_token,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )
    clock.now = T0 + 5 * WINDOW
    windows = collector.close_due()
    assert collector.close_all() == []  # every window had ended
    totals: Counter[tuple[str, str] | None] = Counter()
    for window in windows:
        assert window.start_s % WINDOW == 0
        for release, tally in window.tallies.items():
            assert sum(tally.ttft) == tally.requests
            assert sum(tally.per_token) == tally.requests
            totals[release] += tally.requests
        in_window = [e for e in events if window.start_s <= T0 + e[0] < window.start_s + WINDOW]
        assert sum(t.tokens_in for t in window.tallies.values()) == sum(e[4] for e in in_window)
        assert sum(t.tokens_out for t in window.tallies.values()) == sum(e[5] for e in in_window)
    assert totals == Counter(release for _, release, *_ in events)


def test_only_ended_windows_close() -> None:
    clock = Clock(T0 + 10)
    collector = Collector(WINDOW, clock=clock)
    collector.record_rejection("tiny", "1.0.0")
    clock.now = T0 + WINDOW - 1
    assert collector.close_due() == []
    clock.now = T0 + WINDOW
    [window] = collector.close_due()
    assert window.start_s == T0
    assert window.tallies[("tiny", "1.0.0")].rejections == 1


@given(st.integers(0, 10**12))
def test_coarsening_rule(count: int) -> None:
    coarse = coarsen_count(count)
    if count == 0:
        assert coarse == 0
    elif count < SMALL_COUNT:
        assert coarse == SMALL_COUNT
    else:
        assert coarse == count
    tokens = coarsen_tokens(count)
    assert tokens % TOKEN_QUANTUM == 0
    assert count <= tokens < count + TOKEN_QUANTUM
    assert (tokens == 0) == (count == 0)


@given(st.floats(0, 1000, allow_nan=False))
def test_bucket_edges_are_lower_inclusive(value: float) -> None:
    cell = bucket(TTFT_EDGES_S, value)
    edges = (float("-inf"), *TTFT_EDGES_S, float("inf"))
    assert edges[cell] <= value < edges[cell + 1]


@given(st.lists(st.integers(0, 3), min_size=1, max_size=40))
def test_single_requests_are_indistinguishable_from_a_few(cells: list[int]) -> None:
    tally = Tally(requests=len(cells))
    for cell in cells:
        tally.ttft[cell] += 1
        tally.per_token[cell] += 1
    window = ClosedWindow(T0, WINDOW, {("tiny", "1.0.0"): tally})
    report = report_of(window, ("tiny", "1.0.0"), tally)
    reported = [*report.ttft_histogram, report.requests]
    assert all(v == 0 or v >= SMALL_COUNT for v in reported)
    # Coarsening only rounds up, by less than SMALL_COUNT per cell.
    assert 0 <= sum(report.ttft_histogram) - len(cells) < SMALL_COUNT * len(report.ttft_histogram)


def test_errors_outcomes_loads_and_restarts_land_in_their_reports() -> None:
    clock = Clock(T0 + 5)
    collector = Collector(WINDOW, clock=clock)
    collector.record_error(ErrorClass.TIMEOUT, "tiny", "1.0.0")
    collector.record_error(ErrorClass.INVALID_REQUEST)
    collector.record_load("tiny", "1.0.0", seconds=3.0, peak_memory_mib=900)
    collector.record_update_outcome("tiny", "1.0.0", UpdateOutcome.ROLLED_BACK)
    collector.record_restart(crashed=True)
    clock.now = T0 + WINDOW
    [window] = collector.close_due()
    agent = window.tallies[None]
    tiny = window.tallies[("tiny", "1.0.0")]
    assert (agent.restarts, agent.crashes, agent.errors) == (1, 1, {ErrorClass.INVALID_REQUEST: 1})
    assert tiny.errors == {ErrorClass.TIMEOUT: 1}
    assert sum(tiny.loads) == sum(tiny.peak_memory) == 1
    report = report_of(window, None, agent)
    assert (report.model, report.restarts, report.crashes) == (None, SMALL_COUNT, SMALL_COUNT)
    report = report_of(window, ("tiny", "1.0.0"), tiny)
    assert report.update_outcomes == {UpdateOutcome.ROLLED_BACK: SMALL_COUNT}
    assert report.errors == {ErrorClass.TIMEOUT: SMALL_COUNT}


def totals_after_racing_threads(threads: int, records: int) -> tuple[int, int, int, int]:
    """Requests, tokens in, tokens out and ttft cells counted when `threads` threads each
    record `records` requests at once, under a clock that opens a new window every 4 calls."""
    ticks = itertools.count()
    collector = Collector(1, clock=lambda: T0 + next(ticks) / 4)
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(records):
            collector.record_request(
                "tiny", "1.0.0", ttft_s=0.1, per_token_s=0.01, tokens_in=3, tokens_out=4
            )

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    tallies = [t for window in collector.close_all() for t in window.tallies.values()]
    return (
        sum(t.requests for t in tallies),
        sum(t.tokens_in for t in tallies),
        sum(t.tokens_out for t in tallies),
        sum(sum(t.ttft) for t in tallies),
    )


def test_recording_is_thread_safe() -> None:
    # Without the lock, two threads that both find no tally for a fresh window each create
    # one, and the later replaces the earlier with its counts. The clock opens a new window
    # every few records, and a tiny switch interval makes the interpreter switch threads at
    # almost every chance: with the lock removed most rounds lose counts, so ten rounds in a
    # row never all come out exact (measured: 10 of 10 runs failed).
    threads, records = 8, 500
    expected = threads * records
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _round in range(10):
            totals = totals_after_racing_threads(threads, records)
            assert totals == (expected, 3 * expected, 4 * expected, expected)
    finally:
        sys.setswitchinterval(previous)


def test_recording_keeps_counts_not_requests() -> None:
    # The collector promises O(1) work and memory per event: counts only, nothing kept per
    # request. 20,000 more requests in the same window must not grow what it holds. (What
    # recording costs on the decode path is measured end to end by bench/telemetry.py.)
    collector = Collector(WINDOW, clock=Clock(T0))

    def record(rounds: int) -> None:
        for i in range(rounds):
            collector.record_request(
                "tiny", "1.0.0", ttft_s=i % 7 / 3, per_token_s=i % 5 / 50, tokens_in=i, tokens_out=i
            )

    record(100)  # every histogram cell this pattern reaches now exists
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        record(20_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2_000, f"recording kept {grown} bytes for 20,000 requests"
    [window] = collector.close_all()
    assert window.tallies[("tiny", "1.0.0")].requests == 20_100
