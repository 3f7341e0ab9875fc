"""Gates of a wave, as pure functions: install counts and health aggregates in, one value
per gate against its threshold and a verdict out.

Order of the decision: any FAIL fails (a failure threshold trips at once, even while devices
are still installing); devices still pending or a soak not yet over WAIT; an INCONCLUSIVE
gate (too few reports, a suppressed telemetry cell) pauses, never passes; else PASS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from hub.rollouts.spec import HealthGates, InstallGates


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class GateValue:
    gate: str
    value: float | None
    threshold: float | None
    verdict: Verdict
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InstallCounts:
    """A wave's devices by result. `timed_out` have no result within the device timeout;
    `pending` are still within it. A late result moves a device out of timed_out."""

    size: int
    succeeded: int
    failed: int
    timed_out: int
    pending: int

    @property
    def reported(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True)
class HealthAggregate:
    """One release's telemetry over a period, summed over its cells."""

    devices: int
    error_rate: float | None
    ttft_p95: float | None
    per_token_p95: float | None
    tokens_per_second: float | None
    crashes_per_device_hour: float | None


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def install_gates(counts: InstallCounts, gates: InstallGates) -> list[GateValue]:
    values = []
    failure_ratio = _ratio(counts.failed, counts.size)
    if gates.max_failures is not None:
        failed = counts.failed > gates.max_failures
        values.append(
            GateValue(
                "failures", counts.failed, gates.max_failures,
                Verdict.FAIL if failed else Verdict.PASS, "failed devices (at most)",
            )
        )  # fmt: skip
    if gates.max_failure_ratio is not None:
        failed = failure_ratio > gates.max_failure_ratio
        values.append(
            GateValue(
                "failure_ratio", failure_ratio, gates.max_failure_ratio,
                Verdict.FAIL if failed else Verdict.PASS, "failed / wave (at most)",
            )
        )  # fmt: skip
    settled = counts.pending == 0
    timed_out_ratio = _ratio(counts.timed_out, counts.size)
    values.append(
        GateValue(
            "timed_out_ratio", timed_out_ratio, gates.max_timed_out_ratio,
            Verdict.FAIL if timed_out_ratio > gates.max_timed_out_ratio else Verdict.PASS,
            "no result within the device timeout / wave (at most)",
        )
    )  # fmt: skip
    if not settled:
        reported_verdict = Verdict.WAIT
    elif counts.reported < gates.min_reported:
        reported_verdict = Verdict.INCONCLUSIVE
    else:
        reported_verdict = Verdict.PASS
    values.append(
        GateValue(
            "reported", counts.reported, gates.min_reported, reported_verdict,
            "devices with a result (at least)",
        )
    )  # fmt: skip
    success_ratio = _ratio(counts.succeeded, counts.size)
    if success_ratio >= gates.min_success_ratio:
        success_verdict = Verdict.PASS
    else:
        success_verdict = Verdict.FAIL if settled else Verdict.WAIT
    values.append(
        GateValue(
            "success_ratio", success_ratio, gates.min_success_ratio, success_verdict,
            "succeeded / wave (at least)",
        )
    )  # fmt: skip
    return values


def _compare(
    gate: str,
    new: float | None,
    old: float | None,
    threshold: float | None,
    *,
    relative: bool,
    drop: bool = False,
    detail: str,
) -> GateValue | None:
    if threshold is None:
        return None
    if new is None or old is None:
        return GateValue(gate, None, threshold, Verdict.INCONCLUSIVE, detail + ": no data")
    if relative:
        if old == 0:
            change = 0.0 if new == 0 else float("inf")
        else:
            change = (old - new) / old if drop else (new - old) / old
    else:
        change = new - old
    verdict = Verdict.FAIL if change > threshold else Verdict.PASS
    return GateValue(gate, change, threshold, verdict, f"{detail}: {new:.4g} vs {old:.4g}")


def health_gates(
    new: HealthAggregate | None, old: HealthAggregate | None, gates: HealthGates
) -> list[GateValue]:
    """New release vs the one it replaces. None for either side: its telemetry is
    suppressed or missing, so every enabled gate is INCONCLUSIVE."""
    if not gates.enabled:
        return []
    if new is None or old is None:
        which = "the new release" if new is None else "the release it replaces"
        return [
            GateValue(
                name.removeprefix("max_"),  # each gate is named as its field, less max_
                None, threshold, Verdict.INCONCLUSIVE, f"{which}: too few devices",
            )
            for name, threshold in gates.model_dump().items()
            if threshold is not None
        ]  # fmt: skip
    found = [
        _compare(
            "error_rate_increase", new.error_rate, old.error_rate,
            gates.max_error_rate_increase, relative=False, detail="errors per request",
        ),
        _compare(
            "ttft_p95_regression", new.ttft_p95, old.ttft_p95, gates.max_ttft_p95_regression,
            relative=True, detail="p95 time to first token (s)",
        ),
        _compare(
            "per_token_p95_regression", new.per_token_p95, old.per_token_p95,
            gates.max_per_token_p95_regression, relative=True, detail="p95 per-token latency (s)",
        ),
        _compare(
            "tokens_per_second_drop", new.tokens_per_second, old.tokens_per_second,
            gates.max_tokens_per_second_drop, relative=True, drop=True, detail="tokens/s",
        ),
        _compare(
            "crash_rate_increase", new.crashes_per_device_hour, old.crashes_per_device_hour,
            gates.max_crash_rate_increase, relative=False, detail="crashes per device-hour",
        ),
    ]  # fmt: skip
    return [value for value in found if value is not None]


def decide(values: Sequence[GateValue], soaked: bool) -> Verdict:
    verdicts = {value.verdict for value in values}
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.WAIT in verdicts or not soaked:
        return Verdict.WAIT
    if Verdict.INCONCLUSIVE in verdicts:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS
