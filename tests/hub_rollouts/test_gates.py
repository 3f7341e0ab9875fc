"""Gates, plan and pacing as pure functions."""

from __future__ import annotations

import pytest

from hub.rollouts.gates import (
    HealthAggregate,
    InstallCounts,
    Verdict,
    decide,
    health_gates,
    install_gates,
)
from hub.rollouts.plan import PlanError, draw, notify_budget, wave_sizes
from hub.rollouts.spec import HealthGates, InstallGates, Pacing

GATES = InstallGates(min_success_ratio=0.9, max_failure_ratio=0.1, min_reported=3)


def verdict(counts: InstallCounts, soaked: bool = True) -> Verdict:
    return decide(install_gates(counts, GATES), soaked)


def test_install_gates() -> None:
    assert verdict(InstallCounts(10, 10, 0, 0, 0)) is Verdict.PASS
    assert verdict(InstallCounts(10, 9, 1, 0, 0)) is Verdict.PASS
    # Failures trip at once, even while others are still installing.
    assert verdict(InstallCounts(10, 2, 2, 0, 6)) is Verdict.FAIL
    assert verdict(InstallCounts(10, 5, 0, 0, 5)) is Verdict.WAIT
    assert verdict(InstallCounts(10, 10, 0, 0, 0), soaked=False) is Verdict.WAIT
    # Timed out devices never block: they count against success.
    assert verdict(InstallCounts(10, 8, 0, 2, 0)) is Verdict.FAIL
    # Too few results: inconclusive, which pauses.
    lenient = InstallGates(min_success_ratio=0, max_failure_ratio=None, min_reported=3)
    assert decide(install_gates(InstallCounts(10, 2, 0, 8, 0), lenient), True) is (
        Verdict.INCONCLUSIVE
    )


def test_a_failure_count_gate() -> None:
    gates = InstallGates(min_success_ratio=0, max_failure_ratio=None, max_failures=1)
    assert decide(install_gates(InstallCounts(100, 98, 1, 0, 1), gates), True) is Verdict.WAIT
    assert decide(install_gates(InstallCounts(100, 97, 2, 0, 1), gates), True) is Verdict.FAIL


def test_a_timed_out_ratio_gate() -> None:
    gates = InstallGates(min_success_ratio=0, max_timed_out_ratio=0.2)
    assert decide(install_gates(InstallCounts(10, 7, 0, 3, 0), gates), True) is Verdict.FAIL


OLD = HealthAggregate(20, 0.02, 0.2, 0.03, 40.0, 0.01)
HEALTH = HealthGates(
    max_error_rate_increase=0.01,
    max_ttft_p95_regression=0.25,
    max_per_token_p95_regression=0.25,
    max_tokens_per_second_drop=0.2,
    max_crash_rate_increase=0.05,
)


def test_health_gates_pass_on_the_same_behaviour() -> None:
    values = health_gates(OLD, OLD, HEALTH)
    assert len(values) == 5
    assert decide(values, True) is Verdict.PASS


@pytest.mark.parametrize(
    ("change", "gate"),
    [
        ({"error_rate": 0.04}, "error_rate_increase"),
        ({"ttft_p95": 0.3}, "ttft_p95_regression"),
        ({"per_token_p95": 0.05}, "per_token_p95_regression"),
        ({"tokens_per_second": 30.0}, "tokens_per_second_drop"),
        ({"crashes_per_device_hour": 0.1}, "crash_rate_increase"),
    ],
)
def test_each_health_gate_trips(change: dict[str, float], gate: str) -> None:
    new = HealthAggregate(**{**OLD.__dict__, **change})
    values = health_gates(new, OLD, HEALTH)
    assert [v.gate for v in values if v.verdict is Verdict.FAIL] == [gate]
    assert decide(values, True) is Verdict.FAIL


def test_suppressed_telemetry_is_inconclusive_never_pass() -> None:
    for new, old in [(None, OLD), (OLD, None), (None, None)]:
        values = health_gates(new, old, HEALTH)
        assert {v.verdict for v in values} == {Verdict.INCONCLUSIVE}
        assert [v.gate for v in values] == [v.gate for v in health_gates(OLD, OLD, HEALTH)]
        assert decide(values, True) is Verdict.INCONCLUSIVE
    assert health_gates(None, None, HealthGates()) == []  # no health gates asked for


def test_waves_from_percentages_and_counts() -> None:
    assert wave_sizes(50, [1, 10, 50, 100]) == [1, 4, 20, 25]
    assert wave_sizes(3, [1, 10, 50, 100]) == [1, 1, 1]  # empty waves dropped
    assert wave_sizes(10, counts=[2, 8]) == [2, 8]
    with pytest.raises(PlanError, match="do not add up") as refused:
        wave_sizes(10, counts=[2, 3])
    assert refused.value.field == "wave_counts"
    with pytest.raises(PlanError) as empty:
        wave_sizes(0, [100])
    assert empty.value.field == "target"


def test_the_draw_is_random_but_recorded() -> None:
    devices = [f"box-{i}" for i in range(50)]
    assert draw(devices, 7) == draw(list(reversed(devices)), 7)
    assert draw(devices, 7) != draw(devices, 8)
    assert sorted(draw(devices, 7)) == sorted(devices)


def test_pacing_with_exponential_increase() -> None:
    assert notify_budget(Pacing(per_minute=10), 0) == 10
    assert notify_budget(Pacing(per_minute=10), 150) == 30
    assert notify_budget(Pacing(per_minute=10, increment_factor=2), 150) == 10 + 20 + 40
